# amaranth: UnusedElaboratable=no
"""The Ethernet device's top (``boards/eth_top.py``): parameters, elaboration for the Colorlight
5A-75B (DDR I/O, one EHXPLLL with two outputs, clock constraints), its clock domains and
crossings, and the ports of its simulation mode."""

import pytest
from amaranth.hdl import Fragment
from amaranth.lib.fifo import AsyncFIFO

from boards.eth_top import ETH_HZ, EthLinkTop, eth_pll_settings
from boards.pll import PllError
from hdl.kernels.crc32c import Crc32cKernel

MAC = 0x02_00_00_00_00_01
IP = 0x0A00_0032  # 10.0.0.50
PORT = 7777
CORE_HZ = 50_000_000


@pytest.fixture(scope="module")
def manifest():
    from offload.gateware import device_design

    return device_design("icebreaker", ["crc32c"]).manifest()


def make_top(manifest, **kwargs):
    args = {"mac": MAC, "ip": IP, "port": PORT, "core_hz": CORE_HZ, "mode": "board"}
    args.update(kwargs)
    return EthLinkTop([(1, Crc32cKernel(4))], manifest, **args)


def colorlight():
    module = pytest.importorskip("amaranth_boards.colorlight_5a75b_r7_0",
                                 reason="amaranth-boards is not installed")
    return module.Colorlight_5A75B_R70Platform()


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"mac": 1 << 48}, ValueError),
    ({"mac": -1}, ValueError),
    ({"mac": 0x01_00_5E_00_00_01}, ValueError),  # multicast
    ({"mac": "02:00:00:00:00:01"}, TypeError),
    ({"ip": 1 << 32}, ValueError),
    ({"ip": "10.0.0.50"}, TypeError),
    ({"port": 0}, ValueError),
    ({"port": 65536}, ValueError),
    ({"port": True}, TypeError),
    ({"core_hz": 0}, ValueError),
    ({"core_hz": 50e6}, ValueError),
    ({"mode": "pins"}, ValueError),
])
def test_parameters_checked(manifest, kwargs, error):
    with pytest.raises(error):
        make_top(manifest, **kwargs)


def test_pll_settings():
    """125 MHz on CLKOS and the core on CLKOS2, from one 500 MHz VCO."""
    settings, div = eth_pll_settings(25_000_000, 50_000_000)
    assert settings.vco_hz == 500_000_000 and settings.out_hz == ETH_HZ
    assert settings.vco_hz / settings.param("CLKOS_DIV") == ETH_HZ
    assert div == 10
    assert eth_pll_settings(25_000_000, 125_000_000)[1] == 4
    with pytest.raises(PllError):
        eth_pll_settings(25_000_000, 48_000_000)  # 500 / 48 is not whole


def test_board_elaborates(manifest):
    """Converts for the 5A-75B: RGMII through IDDRX1F (rx_data, rx_ctl) and ODDRX1F (tx_data,
    tx_ctl, tx_clk), one EHXPLLL making 125 and 50 MHz, and the three clocks constrained."""
    platform = colorlight()
    plan = platform.prepare(make_top(manifest), name="eth_top")
    rtlil = plan.files["eth_top.il"]
    assert rtlil.count("IDDRX1F") == 5
    assert rtlil.count("ODDRX1F") == 6
    assert rtlil.count("EHXPLLL") == 1
    assert "CLKOS2_DIV" in rtlil
    lpf = plan.files["eth_top.lpf"]
    assert 'FREQUENCY PORT "eth_rgmii_0__rx_clk__io" 125000000.0 HZ;' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;' in lpf
    nets = [line for line in lpf.splitlines() if line.startswith("FREQUENCY NET")]
    assert sorted(line.split()[-2] for line in nets) == ["125000000.0", "50000000.0"]
    assert 'LOCATE COMP "eth_rgmii_0__rst__io" SITE "P5";' in lpf


def test_board_core_clock_checked(manifest):
    import gc
    import warnings

    with warnings.catch_warnings():
        # The elaboration stops half way: what it made is collected here, unused, quietly.
        warnings.simplefilter("ignore")
        with pytest.raises(PllError):
            colorlight().prepare(make_top(manifest, core_hz=48_000_000), name="eth_top")
        gc.collect()


def test_clock_domains(manifest):
    """MacRx in eth_rx; UdpEndpoint and MacTx in eth_tx; the bridge and the link adapters in
    sync; an AsyncFIFO at each of the three crossings."""
    platform = colorlight()
    frag = Fragment.get(make_top(manifest), platform)
    assert set(frag.domains) == {"eth_rx", "eth_tx", "sync"}
    subs = {name: sub for sub, name, _ in frag.subfragments}
    assert subs["mac_rx"].domain_renames == {"sync": "eth_rx"}
    assert subs["udp"].domain_renames == {"sync": "eth_tx"}
    assert subs["mac_tx"].domain_renames == {"sync": "eth_tx"}
    for name in ("bridge", "datagram_frames", "frames_datagram"):
        assert subs[name].domain_renames == {}
    crossings = {}
    for name in ("rx_frames_cdc", "rx_datagram_cdc", "tx_datagram_cdc"):
        fifo = subs[name].origins[0]
        assert isinstance(fifo, AsyncFIFO)
        crossings[name] = (fifo._w_domain, fifo._r_domain, fifo.width)
    # The skid buffers, on the UDP endpoint's side of each crossing.
    for name in ("rx_frames_cdc_r_skid", "rx_datagram_cdc_w_skid", "tx_datagram_cdc_r_skid"):
        assert subs[name].domain_renames == {"sync": "eth_tx"}
    assert subs["rx_frames_cdc_w_skid"].domain_renames == {"sync": "eth_rx"}
    assert crossings == {
        "rx_frames_cdc": ("eth_rx", "eth_tx", 9),
        "rx_datagram_cdc": ("eth_tx", "sync", 10),
        "tx_datagram_cdc": ("sync", "eth_tx", 9),
    }


def test_sim_ports(manifest):
    """The simulation mode's ports: the RGMII pins, eth_tx's clock and reset, and sync's."""
    from sim.verilog import module_ports, to_verilog

    verilog = to_verilog(make_top(manifest, mode="sim"), "eth_top_sim")
    assert set(module_ports(verilog, "eth_top_sim")) == {
        "rgmii_rx_clk", "rgmii_rx_ctl", "rgmii_rxd", "rgmii_tx_clk", "rgmii_tx_ctl",
        "rgmii_txd", "eth_tx_clk", "eth_tx_rst", "tb_txc", "clk", "rst",
    }


def test_eth_top_cocotb(tmp_path, manifest):
    """The whole device in simulation mode under Verilator (``cocotb_eth_top.py``): an ARP
    request answered, and a datagram holding an OP_MANIFEST request answered with the manifest
    frame, over cocotbext-eth's RGMII models."""
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    pytest.importorskip("cocotbext.eth", reason="cocotbext-eth (the RGMII models) is not "
                                               "installed")
    pytest.importorskip("scapy.layers.inet", reason="scapy (builds and parses the frames) is "
                                                    "not installed")
    from sim.toolchain import ToolchainError, verilator_root

    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(
        lambda: make_top(manifest, mode="sim"), "eth_top_sim", "tests.boards.cocotb_eth_top",
        tmp_path, parameters={"mac": MAC, "ip": IP, "port": PORT, "manifest": manifest.hex()},
        timeout_s=900,
    )
    assert result.tests == 1 and result.skipped == 0  # a failed test raises


def run_skid(busy: bool, beats: int = 200) -> tuple[list[int], int]:
    """Beats 0, 1, ... through a :class:`_Skid`, valid and ready random if ``busy`` else
    always high; the beats out and the cycles until the last came out."""
    import random

    from amaranth.sim import Simulator

    from boards.eth_top import _Skid

    dut = _Skid(8)
    rng = random.Random(7)
    got, cycles = [], [0]

    async def testbench(ctx):
        pending = list(range(beats))
        for cycle in range(10 * beats):
            ctx.set(dut.i_valid, bool(pending) and (not busy or rng.random() < 0.6))
            ctx.set(dut.i_data, pending[0] if pending else 0)
            ctx.set(dut.o_ready, not busy or rng.random() < 0.5)
            took = ctx.get(dut.i_valid) and ctx.get(dut.i_ready)
            if ctx.get(dut.o_valid) and ctx.get(dut.o_ready):
                got.append(ctx.get(dut.o_data))
                cycles[0] = cycle
            await ctx.tick()
            if took:
                pending.pop(0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return got, cycles[0]


def test_skid_buffer():
    """The crossings' skid buffer passes every beat once, in order, under random valid and
    ready, and a beat a cycle when both stay high."""
    got, _ = run_skid(busy=True)
    assert got == list(range(200))
    got, cycles = run_skid(busy=False)
    assert got == list(range(200))
    assert cycles <= 200 + 2
