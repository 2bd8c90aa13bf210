"""cocotb testbench: MacRx and MacTx (tests/eth/test_mac.py's ``MacPair``) against
cocotbext-eth's GMII models.

Frames are built with scapy (``Ether/IP/UDP/payload``); the wire form (preamble, SFD, padding,
FCS) is made by cocotbext-eth's ``GmiiFrame.from_payload`` (``zlib.crc32``), an independent
model. ``GmiiSink`` samples on ``tb_clk_n`` (the DUT clock inverted, so mid-cycle), since
Verilator shows the edge callbacks registers already updated by that edge.
"""

import itertools
import os
import random
import zlib

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.eth import GmiiFrame, GmiiSink, GmiiSource
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hdl.eth.mac import frame_layout
from tests.cocotb_streams import StreamSink, StreamSource, bursty, check_stream_rules

PERIOD = 8
MAC = int(os.environ.get("OFFLOAD_MAC", "0x020000000001"), 0)
MAX_FRAME = int(os.environ.get("OFFLOAD_MAX_FRAME", "1518"))
BUFFER = int(os.environ.get("OFFLOAD_BUFFER", "4096"))
MAX_FRAMES = int(os.environ.get("OFFLOAD_MAX_FRAMES", "64"))
OURS = ":".join(f"{b:02x}" for b in MAC.to_bytes(6, "big"))
OTHER = "02:00:00:00:00:77"
BCAST = "ff:ff:ff:ff:ff:ff"
RX_COUNTERS = ("frames_ok", "bad_fcs", "runts", "too_long", "other_mac", "overflow",
               "rx_errors")


def make_frame(rng: random.Random, dst: str, size: int) -> bytes:
    """A frame of ``size`` bytes (FCS excluded): Ether/IP/UDP/payload, or Ether/payload when
    too short for the UDP headers."""
    if size >= 42:
        pkt = (Ether(dst=dst, src="02:00:00:00:00:99")
               / IP(src="10.0.0.2", dst="10.0.0.1")
               / UDP(sport=rng.randrange(1024, 65536), dport=5005)
               / Raw(rng.randbytes(size - 42)))
    else:
        pkt = Ether(dst=dst, src="02:00:00:00:00:99", type=0x88B5) / Raw(rng.randbytes(size - 14))
    frame = bytes(pkt)
    assert len(frame) == size, (len(frame), size)
    return frame


def padded(frame: bytes) -> bytes:
    return frame + bytes(max(0, 60 - len(frame)))


def wire(frame: bytes, *, pad: bool = True) -> GmiiFrame:
    return GmiiFrame.from_payload(frame, min_len=60 if pad else 0)


def counters(dut) -> dict[str, int]:
    return {name: int(getattr(dut, f"rx_{name}").value) for name in RX_COUNTERS}


class WireMonitor:
    """What MacTx puts on the wire, sampled mid-cycle: each burst of ``tx_en`` as (first cycle,
    cycle after the last, bytes). GmiiSink does not keep the byte it sees ``tx_en`` rise on,
    so the exact preamble and the gaps are checked here."""

    def __init__(self, dut):
        self.dut = dut
        self.bursts: list[tuple[int, int, bytes]] = []
        cocotb.start_soon(self._run())

    async def _run(self):
        cycle, start, body = 0, None, bytearray()
        while True:
            await RisingEdge(self.dut.tb_clk_n)
            cycle += 1
            if int(self.dut.tx_en.value):
                if start is None:
                    start, body = cycle, bytearray()
                body.append(int(self.dut.txd.value))
            elif start is not None:
                self.bursts.append((start, cycle, bytes(body)))
                start = None


async def setup(dut, *, loopback: bool = False):
    cocotb.start_soon(Clock(dut.clk, PERIOD, unit="ns").start())
    dut.loopback.value = int(loopback)
    dut.rst.value = 1
    rx_src = GmiiSource(dut.rxd, dut.rx_er, dut.rx_dv, dut.clk)
    tx_sink = GmiiSink(dut.txd, None, dut.tx_en, dut.tb_clk_n)
    sink = StreamSink(dut, "o_stream", frame_layout, dut.clk, period_ns=PERIOD)
    source = StreamSource(dut, "i_stream", frame_layout, dut.clk, period_ns=PERIOD)
    cocotb.start_soon(check_stream_rules(dut.clk, [sink.port, source.port], period_ns=PERIOD,
                                         reset=dut.rst))
    tx_sink.monitor = WireMonitor(dut)
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return rx_src, tx_sink, sink, source


async def until(dut, condition, cycles: int, what: str) -> None:
    for _ in range(cycles // 16 + 1):
        if condition():
            return
        await ClockCycles(dut.clk, 16)
    raise AssertionError(f"timed out after {cycles} cycles waiting for {what}")


def random_mix(rng: random.Random, count: int):
    """(wire frame, expected output or None, counter it bumps) for a random mix of frames."""
    items = []
    kinds = (["good"] * 6 + ["bcast", "other", "bad_fcs", "runt", "long", "rx_er"])
    for index in range(count):
        kind = kinds[index] if index < len(kinds) else rng.choice(kinds)
        size = rng.choice([60, 61, 1514, rng.randrange(42, 60), rng.randrange(60, 1515),
                           rng.randrange(60, 200)])
        if kind == "good":
            frame = make_frame(rng, OURS, size)
            items.append((wire(frame), padded(frame), "frames_ok"))
        elif kind == "bcast":
            frame = make_frame(rng, BCAST, size)
            items.append((wire(frame), padded(frame), "frames_ok"))
        elif kind == "other":
            frame = make_frame(rng, OTHER, size)
            items.append((wire(frame), None, "other_mac"))
        elif kind == "bad_fcs":
            frame = make_frame(rng, OURS, size)
            w = wire(frame)
            pos = rng.randrange(8, len(w.data))
            w.data[pos] ^= 1 << rng.randrange(8)
            items.append((w, None, "bad_fcs"))
        elif kind == "runt":
            frame = make_frame(rng, OURS, rng.randrange(14, 60))
            items.append((wire(frame, pad=False), None, "runts"))
        elif kind == "long":
            frame = make_frame(rng, OURS, rng.choice([MAX_FRAME - 3, 9000, 1600]))
            items.append((wire(frame), None, "too_long"))
        else:
            frame = make_frame(rng, OURS, size)
            w = wire(frame)
            w.error = [0] * len(w.data)
            w.error[rng.randrange(8, len(w.data))] = 1
            items.append((w, None, "rx_errors"))
    return items


async def send_all(rx_src: GmiiSource, rng: random.Random, items) -> None:
    for w, _, _ in items:
        # Mostly back to back at the minimum gap, sometimes shorter (as after a PHY's clock
        # compensation) or longer.
        rx_src.ifg = rng.choice([12, 12, 12, 4, 1, 30, 200])
        await rx_src.send(w)
    await rx_src.wait()


def expected_counts(items) -> dict[str, int]:
    counts = dict.fromkeys(RX_COUNTERS, 0)
    for _, _, counter in items:
        counts[counter] += 1
    return counts


@cocotb.test()
async def rx_mixed_frames(dut):
    """Every kind of frame, random gaps, no backpressure: exact output and counters."""
    rng = random.Random(1)
    rx_src, _, sink, _ = await setup(dut)
    items = random_mix(rng, 60)
    await send_all(rx_src, rng, items)
    want = [out for _, out, _ in items if out is not None]
    await until(dut, lambda: len(sink.messages) >= len(want), 20000, "the good frames")
    await ClockCycles(dut.clk, 100)
    got = [m.data for m in sink.messages]
    assert len(got) == len(want), (len(got), len(want))
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"frame {index}: got {len(g)} bytes, want {len(w)}"
    assert counters(dut) == expected_counts(items)


async def backpressure(dut, seed: int, pauses, pattern: str) -> int:
    rng = random.Random(seed)
    rx_src, _, sink, _ = await setup(dut)
    sink.set_pause_generator(pauses)
    items = random_mix(rng, 50)
    await send_all(rx_src, rng, items)
    want = [out for _, out, _ in items if out is not None]
    await ClockCycles(dut.clk, 60000)
    got = [m.data for m in sink.messages]
    # Delivered frames are whole and a subsequence of the good ones, in order.
    it = iter(want)
    for g in got:
        assert any(g == w for w in it), "a frame came out that was not sent, or out of order"
    c = counters(dut)
    assert c["frames_ok"] == len(got)
    assert c["frames_ok"] + c["overflow"] == len(want)
    exp = expected_counts(items)
    for name in ("bad_fcs", "runts", "too_long", "other_mac", "rx_errors"):
        assert c[name] == exp[name], (name, c[name], exp[name])
    dut._log.info("%s backpressure: %d of %d good frames delivered, %d overflowed",
                  pattern, len(got), len(want), c["overflow"])
    return c["overflow"]


@cocotb.test()
async def rx_backpressure_random(dut):
    """Frames at random gaps, the output not ready 85% of the cycles at random: the buffer
    absorbs what it can; frames that overflow it are dropped whole and counted, the rest come
    out whole and in order."""
    prng = random.Random(102)
    overflowed = await backpressure(dut, 2, (prng.random() < 0.85 for _ in itertools.count()),
                                    "random")
    assert overflowed > 0, "the test meant to overflow the buffer did not"


@cocotb.test()
async def rx_backpressure_bursty(dut):
    """As above, the output pausing in bursts of 1 to 12 cycles."""
    await backpressure(dut, 3, bursty(3), "bursty")


@cocotb.test()
async def rx_overflow_exact(dut):
    """With the output stalled, frames are kept while the buffer (and the length FIFO) has
    room and dropped after; once released, exactly the kept ones come out."""
    rng = random.Random(4)
    rx_src, _, sink, _ = await setup(dut)
    sink.set_pause_generator(itertools.repeat(True))
    sizes = [1000, 1400, 60, 900, 700, 80, 1514, 60, 200] + [60] * 70
    frames = [make_frame(rng, OURS, s) for s in sizes]
    # Model: the first kept frame leaves the length FIFO and its first byte the buffer at once
    # (into the output register); a frame needs room for its bytes and FCS.
    kept, used, queued = [], 0, 0
    for f in frames:
        if len(f) + 4 <= BUFFER - used and queued < MAX_FRAMES:
            used += len(f) - (1 if not kept else 0)
            queued += 1 if kept else 0
            kept.append(f)
    for f in frames:
        await rx_src.send(wire(f))
    await rx_src.wait()
    await ClockCycles(dut.clk, 50)
    c = counters(dut)
    assert c["overflow"] == len(frames) - len(kept), (c, len(kept))
    assert c["frames_ok"] == len(kept)
    sink.set_pause_generator(None)
    await until(dut, lambda: len(sink.messages) >= len(kept), 20000, "the kept frames")
    await ClockCycles(dut.clk, 50)
    assert [m.data for m in sink.messages] == [padded(f) for f in kept]
    # And the buffer works normally afterwards.
    f = make_frame(rng, BCAST, 300)
    await rx_src.send(wire(f))
    await until(dut, lambda: len(sink.messages) == len(kept) + 1, 2000, "a frame after")
    assert sink.messages[-1].data == f


async def check_tx(dut, tx_sink: GmiiSink, frames, timeout: int, *, exact_gap=False):
    await until(dut, lambda: tx_sink.count() >= len(frames), timeout, "the sent frames")
    await ClockCycles(dut.clk, 50)
    assert tx_sink.count() == len(frames)
    bursts = tx_sink.monitor.bursts
    assert len(bursts) == len(frames)
    for index, (f, (start, end, body)) in enumerate(zip(frames, bursts, strict=True)):
        # The independent model: payload (padded) and FCS.
        rx = await tx_sink.recv()
        assert rx.error is None, f"frame {index}: error set"
        assert rx.check_fcs(), f"frame {index}: bad FCS"
        assert bytes(rx.get_payload()) == padded(f), f"frame {index}: payload"
        # The wire, byte for byte: 7 preamble bytes, SFD, frame, padding, FCS, no gap.
        want = b"\x55" * 7 + b"\xd5" + padded(f) + zlib.crc32(padded(f)).to_bytes(4, "little")
        assert body == want, f"frame {index}: wire bytes differ"
        assert end - start == len(want)
        if index:
            gap = start - bursts[index - 1][1]
            assert gap >= 12, f"frame {index}: inter-frame gap of {gap} cycles"
            if exact_gap:
                assert gap == 12, f"frame {index}: inter-frame gap of {gap} cycles"
    assert tx_sink.empty()


@cocotb.test()
async def tx_frames(dut):
    """MacTx: random sizes (1 to 1514 bytes), the source pausing at random; GmiiSink checks
    preamble, padding, FCS and inter-frame gap; a too-long frame is dropped and counted."""
    rng = random.Random(5)
    _, tx_sink, _, source = await setup(dut)
    prng = random.Random(6)
    source.set_pause_generator(prng.random() < 0.3 for _ in itertools.count())
    sizes = [1, 14, 59, 60, 61, 1514] + [rng.randrange(14, 1515) for _ in range(20)]
    frames = []
    for s in sizes:
        f = make_frame(rng, OURS, s) if s >= 14 else rng.randbytes(s)
        frames.append(f)
        source.send(f)
    source.send(make_frame(rng, OURS, 1515))  # one too long: dropped
    last = make_frame(rng, BCAST, 100)
    frames.append(last)
    source.send(last)
    await source.wait()
    await check_tx(dut, tx_sink, frames, 80000)
    assert int(dut.tx_dropped.value) == 1
    assert int(dut.tx_frames_sent.value) == len(frames)


@cocotb.test()
async def tx_back_to_back(dut):
    """Frames queued at once go out with exactly the minimum gap of 12 idle cycles."""
    rng = random.Random(7)
    _, tx_sink, _, source = await setup(dut)
    frames = [make_frame(rng, OURS, rng.randrange(60, 200)) for _ in range(10)]
    for f in frames:
        source.send(f)
    await check_tx(dut, tx_sink, frames, 10000, exact_gap=True)


@cocotb.test()
async def tx_buffer_full(dut):
    """More than the packet buffer holds, queued at once: longest frames (the byte buffer
    fills), then 1-byte frames (the length FIFO fills). The input stalls, nothing is lost,
    and the frames go out back to back with the minimum gap."""
    rng = random.Random(16)
    _, tx_sink, _, source = await setup(dut)
    frames = [make_frame(rng, OURS, 1514) for _ in range(6)]
    frames += [bytes([rng.randrange(256)]) for _ in range(80)]
    for f in frames:
        source.send(f)
    await check_tx(dut, tx_sink, frames, 30000, exact_gap=True)
    assert int(dut.tx_dropped.value) == 0


@cocotb.test()
async def loopback(dut):
    """MacTx into MacRx: the frames to us and broadcast come back, padded; others dropped."""
    rng = random.Random(8)
    _, _, sink, source = await setup(dut, loopback=True)
    prng = random.Random(9)
    sink.set_pause_generator(prng.random() < 0.3 for _ in itertools.count())
    want, others = [], 0
    for _ in range(40):
        dst = rng.choice([OURS, OURS, BCAST, OTHER])
        f = make_frame(rng, dst, rng.choice([14, 42, 59, 60, rng.randrange(14, 1515)]))
        source.send(f)
        if dst == OTHER:
            others += 1
        else:
            want.append(padded(f))
    await until(dut, lambda: len(sink.messages) >= len(want), 120000, "the looped frames")
    await ClockCycles(dut.clk, 100)
    assert [m.data for m in sink.messages] == want
    c = counters(dut)
    assert c == dict(expected_counts([]), frames_ok=len(want), other_mac=others), c


@cocotb.test()
async def fcs_matches_zlib(dut):
    """The FCS MacTx appends is zlib.crc32 of the padded frame, bytes least significant
    first (also checked by GmiiSink above; here against zlib directly)."""
    rng = random.Random(10)
    _, tx_sink, _, source = await setup(dut)
    f = make_frame(rng, OURS, 123)
    source.send(f)
    await until(dut, lambda: tx_sink.count() >= 1, 3000, "the frame")
    rx = await tx_sink.recv()
    assert bytes(rx.get_fcs()) == zlib.crc32(f).to_bytes(4, "little")
    await RisingEdge(dut.clk)
