"""Options of the whole suite."""


def pytest_addoption(parser):
    group = parser.getgroup("offload", "offload hardware-in-the-loop")
    group.addoption("--device", default="sim",
                    help="device spec the HIL suite runs against: 'sim' (a virtual board, the "
                         "default), or a board's port, e.g. serial:///dev/ttyUSB1")
    group.addoption("--board", default="icebreaker",
                    help="the board behind --device (and the virtual board's board)")
