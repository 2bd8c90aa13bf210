"""cocotb testbench: MacRx and MacTx behind Rgmii's simulation implementation
(tests/eth/test_mac.py's ``MacRgmii``), against cocotbext-eth's RGMII models at 1 Gbps.

The PHY's receive clock ``rgmii_rx_clk`` is a clock of its own (125 MHz, not in phase with the
MAC's ``clk``); ``RgmiiSource`` puts each nibble on the pins at the opposite edge, so that the
clock's edges are in the middle of the data, as an RGMII-ID PHY does. The transmit pins change
with ``clk``'s edges; ``RgmiiSink`` samples them on ``tb_txc``, ``clk`` delayed by 2 ns (the
PHY's transmit clock delay).
"""

import itertools
import random
import zlib

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer
from cocotbext.eth import GmiiFrame, RgmiiSink, RgmiiSource

from hdl.eth.mac import frame_layout
from tests.cocotb_streams import StreamSink, StreamSource, check_stream_rules
from tests.eth.cocotb_mac import (
    BCAST,
    OTHER,
    OURS,
    PERIOD,
    RX_COUNTERS,
    counters,
    expected_counts,
    make_frame,
    padded,
    random_mix,
    until,
)


async def setup(dut):
    cocotb.start_soon(Clock(dut.clk, PERIOD, unit="ns").start())
    dut.rst.value = 1
    await Timer(3, unit="ns")
    # The PHY's receive clock: same rate, another phase, a touch slower.
    cocotb.start_soon(Clock(dut.rgmii_rx_clk, PERIOD * 1000 + 2, unit="ps").start())
    await Timer(1, unit="ns")
    # clk delayed by 2 ns, as an RGMII-ID PHY delays the transmit clock.
    cocotb.start_soon(Clock(dut.tb_txc, PERIOD, unit="ns").start())
    rx_src = RgmiiSource(dut.rgmii_rxd, dut.rgmii_rx_ctl, dut.rgmii_rx_clk)
    tx_sink = RgmiiSink(dut.rgmii_txd, dut.rgmii_tx_ctl, dut.tb_txc)
    sink = StreamSink(dut, "o_stream", frame_layout, dut.rgmii_rx_clk, period_ns=PERIOD)
    source = StreamSource(dut, "i_stream", frame_layout, dut.clk, period_ns=PERIOD)
    cocotb.start_soon(check_stream_rules(dut.rgmii_rx_clk, [sink.port], period_ns=PERIOD))
    cocotb.start_soon(check_stream_rules(dut.clk, [source.port], period_ns=PERIOD,
                                         reset=dut.rst))
    await ClockCycles(dut.clk, 8)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 8)
    return rx_src, tx_sink, sink, source


@cocotb.test()
async def rgmii_rx_mixed(dut):
    """Every kind of frame through the RGMII receive side: exact output and counters, the
    output under random backpressure."""
    rng = random.Random(11)
    rx_src, _, sink, _ = await setup(dut)
    prng = random.Random(12)
    sink.set_pause_generator(prng.random() < 0.3 for _ in itertools.count())
    items = random_mix(rng, 40)
    for w, _, _ in items:
        rx_src.ifg = rng.choice([12, 12, 20])
        await rx_src.send(w)
    await rx_src.wait()
    want = [out for _, out, _ in items if out is not None]
    await until(dut, lambda: len(sink.messages) >= len(want), 40000, "the good frames")
    await ClockCycles(dut.clk, 100)
    assert [m.data for m in sink.messages] == want
    assert counters(dut) == expected_counts(items)
    assert set(counters(dut)) == set(RX_COUNTERS)


@cocotb.test()
async def rgmii_rx_error(dut):
    """rx_er, carried on rx_ctl's falling-edge half, drops the frame; the next one is fine."""
    rng = random.Random(13)
    rx_src, _, sink, _ = await setup(dut)
    bad = GmiiFrame.from_payload(make_frame(rng, OURS, 100))
    bad.error = [0] * len(bad.data)
    bad.error[40] = 1
    good = make_frame(rng, BCAST, 100)
    other = make_frame(rng, OTHER, 100)
    for f in (bad, GmiiFrame.from_payload(other), GmiiFrame.from_payload(good)):
        await rx_src.send(f)
    await until(dut, lambda: len(sink.messages) >= 1, 3000, "the good frame")
    await ClockCycles(dut.clk, 100)
    assert [m.data for m in sink.messages] == [good]
    c = counters(dut)
    assert (c["rx_errors"], c["other_mac"], c["frames_ok"]) == (1, 1, 1), c


@cocotb.test()
async def rgmii_tx(dut):
    """MacTx through the RGMII transmit side: RgmiiSink sees exact preamble, padded frame and
    FCS for each frame."""
    rng = random.Random(14)
    _, tx_sink, _, source = await setup(dut)
    prng = random.Random(15)
    source.set_pause_generator(prng.random() < 0.3 for _ in itertools.count())
    frames = [make_frame(rng, OURS, s) for s in [14, 59, 60, 61, 1514]]
    frames += [make_frame(rng, OURS, rng.randrange(14, 1515)) for _ in range(10)]
    for f in frames:
        source.send(f)
    await until(dut, lambda: tx_sink.count() >= len(frames), 60000, "the sent frames")
    await ClockCycles(dut.clk, 50)
    assert tx_sink.count() == len(frames)
    for index, f in enumerate(frames):
        rx = await tx_sink.recv()
        assert rx.error is None, f"frame {index}: error"
        want = b"\x55" * 7 + b"\xd5" + padded(f) + zlib.crc32(padded(f)).to_bytes(4, "little")
        assert bytes(rx.data) == want, f"frame {index}: wire bytes differ"
        assert rx.check_fcs()
