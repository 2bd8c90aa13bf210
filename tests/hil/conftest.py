"""The HIL suite runs against ``--device``: a virtual board by default, or a real board.

A person with an iCEBreaker runs the same tests on it with
``pytest tests/hil --device serial:///dev/ttyUSB1 --board icebreaker``; ``--device udp-sim``
runs them on the virtual Ethernet board (UDP), and ``--device udp://10.0.0.50:7777`` on a
Colorlight 5A-75B on the LAN.
"""

import pytest

import offload
from sim.toolchain import ToolchainError


def board_name(config) -> str:
    """The board under test: ``--board``, else the virtual board's, else the iCEBreaker."""
    from offload.device import SIM_BOARDS

    return (config.getoption("--board")
            or SIM_BOARDS.get(config.getoption("--device"), "icebreaker"))


def device_spec(config) -> str:
    spec = config.getoption("--device")
    if virtual(config):
        return f"sim:{board_name(config)}"
    return spec


def virtual(config) -> bool:
    """Whether the device under test is a virtual board (``sim``, ``udp-sim``)."""
    from offload.device import SIM_BOARDS

    return config.getoption("--device") in SIM_BOARDS


def open_device(config, **kwargs):
    """The device under test. A virtual board is built with every registered kernel (those a
    device does not have by default, such as protobuf for its default schema, too); a real
    board has what it was built with."""
    if virtual(config):
        from offload import kernels

        kwargs.setdefault("kernels", [spec.name for spec in kernels.KERNELS])
    try:
        return offload.open(device_spec(config), **kwargs)
    except ToolchainError as exc:
        pytest.skip(f"the virtual board needs Verilator: {exc}")


@pytest.fixture(scope="session")
def _session_device(pytestconfig):
    dev = open_device(pytestconfig, fallback="never")
    yield dev
    dev.close()


@pytest.fixture
def device(_session_device):
    """The device under test, its stateful kernels reset before each test that uses it, so no
    test sees another's state."""
    from offload import kernels

    for spec in kernels.KERNELS:
        if spec.stateful and spec.name in _session_device.gateware_kernels:
            _session_device.reset(spec.name)
    return _session_device


@pytest.fixture
def is_virtual(pytestconfig) -> bool:
    return virtual(pytestconfig)
