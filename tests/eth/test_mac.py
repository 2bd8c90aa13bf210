# amaranth: UnusedElaboratable=no
"""MacRx and MacTx: the CRC in Amaranth's simulator, then both MACs in cocotb under Verilator
against cocotbext-eth's GMII models (tests/eth/cocotb_mac.py)."""

import random
import zlib

import pytest
from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, Mux, ResetSignal, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hdl.eth.crc32 import INIT, RESIDUE, XOROUT, crc32_ref, crc_byte_step
from hdl.eth.mac import MacRx, MacTx, frame_layout
from hdl.eth.rgmii import Rgmii

MAC = 0x02_00_00_00_00_01


class MacPair(wiring.Component):
    """MacRx and MacTx side by side for the cocotb testbench. With ``loopback`` high, MacRx
    receives what MacTx sends instead of ``rx_*``. ``tb_clk_n`` is the clock inverted, for the
    testbench's GMII sink to sample mid-cycle."""

    def __init__(self, mac: int = MAC):
        self.rx = MacRx(mac)
        self.tx = MacTx()
        members = {
            "loopback": In(1), "rx_dv": In(1), "rx_er": In(1), "rxd": In(8),
            "o_stream": Out(stream.Signature(frame_layout)),
            "i_stream": In(stream.Signature(frame_layout)),
            "tx_en": Out(1), "txd": Out(8), "tb_clk_n": Out(1),
            "tx_frames_sent": Out(32), "tx_dropped": Out(32),
        }
        members.update({f"rx_{name}": Out(32) for name in MacRx.COUNTERS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = self.rx
        m.submodules.tx = tx = self.tx
        wiring.connect(m, rx.o_stream, wiring.flipped(self.o_stream))
        wiring.connect(m, wiring.flipped(self.i_stream), tx.i_stream)
        m.d.comb += [
            rx.rx_dv.eq(Mux(self.loopback, tx.tx_en, self.rx_dv)),
            rx.rx_er.eq(Mux(self.loopback, 0, self.rx_er)),
            rx.rxd.eq(Mux(self.loopback, tx.txd, self.rxd)),
            self.tx_en.eq(tx.tx_en), self.txd.eq(tx.txd),
            self.tb_clk_n.eq(~ClockSignal()),
            self.tx_frames_sent.eq(tx.frames_sent), self.tx_dropped.eq(tx.dropped),
        ]
        m.d.comb += [getattr(self, f"rx_{name}").eq(getattr(rx, name))
                     for name in MacRx.COUNTERS]
        return m


class MacRgmii(wiring.Component):
    """MacRx and MacTx behind the simulation implementation of Rgmii, for the cocotb
    testbench: MacRx (and ``o_stream``, and the counters) in ``eth_rx``, clocked by
    ``rgmii_rx_clk``; MacTx in ``sync``. ``tb_txc`` is not used by the design: the testbench
    drives it with the clock delayed by 2 ns, as an RGMII-ID PHY delays the transmit clock,
    and samples the transmit pins with it."""

    def __init__(self, mac: int = MAC):
        self.rx = MacRx(mac)
        self.tx = MacTx()
        self.rgmii = Rgmii()
        members = {
            "rgmii_rx_clk": In(1), "rgmii_rx_ctl": In(1), "rgmii_rxd": In(4),
            "rgmii_tx_clk": Out(1), "rgmii_tx_ctl": Out(1), "rgmii_txd": Out(4),
            "tb_txc": In(1),
            "o_stream": Out(stream.Signature(frame_layout)),
            "i_stream": In(stream.Signature(frame_layout)),
        }
        members.update({f"rx_{name}": Out(32) for name in MacRx.COUNTERS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.rgmii = rgmii = self.rgmii
        m.domains.eth_rx = ClockDomain("eth_rx")
        m.d.comb += ClockSignal("eth_rx").eq(rgmii.rx_clk)
        m.submodules.eth_rx_reset = ResetSynchronizer(ResetSignal("sync"), domain="eth_rx")
        m.submodules.rx = rx = DomainRenamer("eth_rx")(self.rx)
        m.submodules.tx = tx = self.tx
        wiring.connect(m, self.rx.o_stream, wiring.flipped(self.o_stream))
        wiring.connect(m, wiring.flipped(self.i_stream), self.tx.i_stream)
        for pin in ("rx_clk", "rx_ctl", "rxd"):
            m.d.comb += getattr(rgmii, f"rgmii_{pin}").eq(getattr(self, f"rgmii_{pin}"))
        for pin in ("tx_clk", "tx_ctl", "txd"):
            m.d.comb += getattr(self, f"rgmii_{pin}").eq(getattr(rgmii, f"rgmii_{pin}"))
        m.d.comb += [
            rx.rx_dv.eq(rgmii.rx_dv), rx.rx_er.eq(rgmii.rx_er), rx.rxd.eq(rgmii.rxd),
            rgmii.tx_en.eq(tx.tx_en), rgmii.tx_er.eq(0), rgmii.txd.eq(tx.txd),
        ]
        m.d.comb += [getattr(self, f"rx_{name}").eq(getattr(self.rx, name))
                     for name in MacRx.COUNTERS]
        return m


def test_crc32_ref_is_zlib():
    rng = random.Random(0)
    for n in (0, 1, 7, 60, 1514):
        data = rng.randbytes(n)
        assert crc32_ref(data) == zlib.crc32(data)


def test_crc_byte_step_is_zlib():
    data = random.Random(1).randbytes(100)
    fcs = zlib.crc32(data).to_bytes(4, "little")
    state = Signal(32, init=INIT)
    byte = Signal(8)
    m = Module()
    m.d.sync += state.eq(crc_byte_step(state, byte))
    seen = []

    async def bench(ctx):
        for b in data + fcs:
            ctx.set(byte, b)
            await ctx.tick()
            seen.append(ctx.get(state))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen[len(data) - 1] ^ XOROUT == zlib.crc32(data)
    assert seen[-1] == RESIDUE


def test_parameters_checked():
    with pytest.raises(ValueError):
        MacRx(1 << 48)
    with pytest.raises(ValueError):
        MacRx(MAC, buffer_bytes=3000)
    with pytest.raises(ValueError):
        MacRx(MAC, max_frame=9018, buffer_bytes=4096)
    with pytest.raises(TypeError):
        MacTx(max_len="1514")
    with pytest.raises(ValueError):
        MacTx(ifg=8)


def _tools():
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    pytest.importorskip("cocotbext.eth", reason="cocotbext-eth (the independent GMII models) "
                                                "is not installed")
    pytest.importorskip("scapy", reason="scapy (builds the test frames) is not installed")
    from sim.toolchain import ToolchainError, verilator_root

    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


def test_mac_cocotb(tmp_path):
    _tools()
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(MacPair, "eth_mac_pair", "tests.eth.cocotb_mac", tmp_path,
                        parameters={"mac": hex(MAC)}, timeout_s=900)
    assert result.tests == 9 and result.skipped == 0  # a failed test raises


def test_rgmii_cocotb(tmp_path):
    _tools()
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(MacRgmii, "eth_mac_rgmii", "tests.eth.cocotb_rgmii", tmp_path,
                        parameters={"mac": hex(MAC)}, timeout_s=900)
    assert result.tests == 3 and result.skipped == 0  # a failed test raises


def test_rgmii_ddrbuffer_elaborates():
    """The board implementation (DDRBuffer) converts for the Colorlight 5A-75B's ECP5: IDDRX1F
    on rx_data and rx_ctl, ODDRX1F on tx_data, tx_ctl and tx_clk. (Not run on a board.)"""
    boards = pytest.importorskip("amaranth_boards.colorlight_5a75b_r7_0",
                                 reason="amaranth-boards is not installed")
    from amaranth.hdl import Elaboratable

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            rgmii = Rgmii(platform.request("eth_rgmii", 0, dir="-"))
            m.submodules.rgmii = rgmii
            m.domains.eth_rx = ClockDomain("eth_rx")
            m.d.comb += ClockSignal("eth_rx").eq(rgmii.rx_clk)
            m.submodules.eth_rx_reset = ResetSynchronizer(
                ResetSignal("sync", allow_reset_less=True), domain="eth_rx")
            m.submodules.rx = rx = DomainRenamer("eth_rx")(MacRx(MAC))
            m.submodules.tx = tx = MacTx()
            m.d.comb += [
                rx.rx_dv.eq(rgmii.rx_dv), rx.rx_er.eq(rgmii.rx_er), rx.rxd.eq(rgmii.rxd),
                rgmii.tx_en.eq(tx.tx_en), rgmii.txd.eq(tx.txd),
            ]
            return m

    plan = boards.Colorlight_5A75B_R70Platform().prepare(Top(), name="eth_top")
    rtlil = plan.files["eth_top.il"]
    assert rtlil.count("IDDRX1F") == 5
    assert rtlil.count("ODDRX1F") == 6
