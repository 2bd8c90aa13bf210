"""Options of the whole suite, and the fault tests' tally printed at the end of a run."""

from __future__ import annotations

import pytest

_TALLY: list[tuple[str, dict[str, int]]] = []


def pytest_addoption(parser):
    group = parser.getgroup("offload", "offload hardware-in-the-loop")
    group.addoption("--device", default="sim",
                    help="device spec the HIL suite runs against: 'sim' (a virtual board, the "
                         "default), or a board's port, e.g. serial:///dev/ttyUSB1")
    group.addoption("--board", default=None,
                    help="the board behind --device (and the virtual board's board); default: "
                         "icebreaker, or colorlight-5a75b for --device udp-sim")
    group.addoption("--slow", action="store_true", default=False,
                    help="more examples where a test draws them (more random protobuf "
                         "schemas, each a virtual board of its own), the proofs that take "
                         "minutes, and the HIL suite's call of 72 MiB")


@pytest.fixture
def fault_tally(request):
    """A dict a fault test counts its outcomes in (correct, errors, fallbacks, ...); every
    test's counts are shown at the end of the run."""
    counts: dict[str, int] = {}
    yield counts
    if counts:
        _TALLY.append((request.node.nodeid.split("::")[-1], counts))


def pytest_terminal_summary(terminalreporter):
    if not _TALLY:
        return
    terminalreporter.section("fault tests: what every call returned")
    for name, counts in _TALLY:
        terminalreporter.write_line(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
