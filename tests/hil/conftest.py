"""The HIL suite runs against ``--device``: a virtual board by default, or a real board.

A person with an iCEBreaker runs the same tests on it with
``pytest tests/hil --device serial:///dev/ttyUSB1 --board icebreaker``.
"""

import pytest

import offload
from sim.toolchain import ToolchainError


def device_spec(config) -> str:
    spec = config.getoption("--device")
    if spec == "sim":
        return f"sim:{config.getoption('--board')}"
    return spec


def open_device(config, **kwargs):
    """The device under test. A virtual board is built with every registered kernel (those a
    device does not have by default, such as protobuf for its default schema, too); a real
    board has what it was built with."""
    if config.getoption("--device") == "sim":
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
    return pytestconfig.getoption("--device") == "sim"
