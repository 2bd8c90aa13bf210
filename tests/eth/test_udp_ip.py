"""The UDP endpoint (``hdl/eth/udp.py``): its parameters, and its cocotb testbench
(``tests/eth/cocotb_udp_ip.py``, frames built and parsed by scapy) under Verilator."""

import pytest

from hdl.eth.udp import UdpEndpoint
from sim.toolchain import ToolchainError, verilator_root

MAC = 0x02_00_5E_10_20_30
IP = 0xC0A8_0102  # 192.168.1.2
PORT = 7000

# cocotb tests in the testbench: 9 ARP runs, 9 receive runs, 6 reply runs and three more.
COCOTB_TESTS = 9 + 9 + 6 + 3


def test_parameters_checked():
    with pytest.raises(ValueError):
        UdpEndpoint(1 << 48, IP, PORT)
    with pytest.raises(ValueError):
        UdpEndpoint(MAC, IP, 65536)
    with pytest.raises(ValueError):
        UdpEndpoint(MAC, IP, PORT, max_datagram=0)
    with pytest.raises(ValueError):
        UdpEndpoint(MAC, IP, PORT, max_datagram=65535 - 27)
    with pytest.raises(TypeError):
        UdpEndpoint(MAC, "192.168.1.2", PORT)


def test_udp_endpoint_cocotb(tmp_path):
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    pytest.importorskip("scapy.layers.inet", reason="scapy (builds and parses the frames) is "
                                                    "not installed")
    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(
        lambda: UdpEndpoint(MAC, IP, PORT), "udp_endpoint", "tests.eth.cocotb_udp_ip", tmp_path,
        parameters={"mac": MAC, "ip": IP, "port": PORT, "max_datagram": 1472, "seed": 1},
        timeout_s=900,
    )
    assert result.tests == COCOTB_TESTS and result.skipped == 0  # a failed test raises
