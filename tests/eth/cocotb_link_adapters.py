"""cocotb testbench of the UDP link adapters (``hdl/eth/link.py``) under Verilator.

Run by ``tests/eth/test_link_adapters.py`` through :func:`sim.cocotb_runner.run_cocotb`, once
with :class:`~hdl.eth.link.DatagramFrames` as the design (the ``split_*`` tests) and once with
:class:`~hdl.eth.link.FramesDatagram` (the ``pack_*`` tests); the parameters come as
``OFFLOAD_MAX_FRAME``, ``OFFLOAD_MAX_DATAGRAM``, ``OFFLOAD_LINGER`` and ``OFFLOAD_SEED``.

Frames are built by the host codec (``frame_body``), datagrams packed by the host's
``pack_datagrams`` and read back by its ``split_datagram``: what the gateware does is checked
against the host's reading of the protocol. Every run is under the shared idle and
backpressure patterns of ``tests/cocotb_streams.py``, the stream rules checked every cycle on
both ports.
"""

from __future__ import annotations

import itertools
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, with_timeout

from hdl.eth.link import datagram_in_layout, datagram_out_layout
from hdl.link import protocol as p
from hdl.link.cobs import frame_layout
from offload.link.codec import Frame, frame_body, pack_datagrams, split_datagram
from tests.cocotb_streams import (
    PATTERNS,
    TB,
    StreamPort,
    StreamSource,
    _pauses,
    check_stream_rules,
)

MAX_FRAME = int(os.environ.get("OFFLOAD_MAX_FRAME", str(p.MAX_DATAGRAM)))
MAX_DATAGRAM = int(os.environ.get("OFFLOAD_MAX_DATAGRAM", str(p.MAX_DATAGRAM)))
LINGER = int(os.environ.get("OFFLOAD_LINGER", "16"))
SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 8
#: The largest payload of a frame that fits a datagram.
MAX_FIT = p.MAX_DATAGRAM - p.HEADER_SIZE - p.CRC_SIZE

PATTERN_RUNS = list(itertools.product(PATTERNS, PATTERNS))


def random_body(rng: random.Random, *, large: float = 0.25, most: int = MAX_FIT) -> bytes:
    """A frame (before COBS) with a random header and a payload of 0 to ``most`` bytes, mostly
    short, a ``large`` share of any length."""
    size = rng.randint(0, most) if rng.random() < large else rng.randint(0, min(48, most))
    frame = Frame(rng.randrange(256), rng.randrange(256), rng.getrandbits(32),
                  rng.randbytes(size), rng.randrange(256), rng.randrange(256))
    return frame_body(frame)


# -- DatagramFrames ------------------------------------------------------------------------------

class DecodedSink:
    """Takes ``decoded_layout`` beats from ``o_stream``: frames as (bytes, bad) at end beats."""

    def __init__(self, dut, pauses):
        self.port = StreamPort(dut, "o_stream")
        self.clock = dut.clk
        self.pauses = pauses
        self.frames: list[tuple[bytes, bool]] = []
        self.port.ready.value = 0
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        edge, settled = RisingEdge(self.clock), ReadOnly()
        body = bytearray()
        while True:
            await edge
            taking = not next(self.pauses)
            self.port.ready.value = int(taking)
            await settled
            if not (taking and self.port.valid.value):
                continue
            word = int(self.port.payload.value)
            if (word >> 8) & 1:  # end
                self.frames.append((bytes(body), bool((word >> 9) & 1)))
                body = bytearray()
            else:
                body.append(word & 0xFF)

    async def wait_for(self, count: int, timeout_cycles: int) -> None:
        async def until():
            while len(self.frames) < count:
                await RisingEdge(self.clock)

        await with_timeout(until(), timeout_cycles * CLOCK_NS, "ns")


def expected_frames(datagram: bytes, error: bool) -> list[tuple[bytes, bool]]:
    """What the bridge must be given for ``datagram``: by ``split_datagram``, its whole frames
    good, then what is left (a frame cut short) bad; with ``error``, the frame holding the last
    byte bad."""
    frames, cut = split_datagram(datagram)
    out = [(frame, False) for frame in frames]
    if cut:
        out.append((datagram[sum(map(len, frames)):], True))
    elif error:
        out[-1] = (out[-1][0], True)
    return out


def random_datagrams(rng: random.Random, count: int) -> list[tuple[bytes, bool]]:
    """Datagrams as the host packs them, some cut at a random byte, some flagged ``error``,
    some of random bytes; each with its error flag."""
    out = []
    while len(out) < count:
        bodies = [random_body(rng) for _ in range(rng.randint(1, 8))]
        for datagram in pack_datagrams(bodies):
            kind = rng.random()
            if kind < 0.2 and len(datagram) > 1:
                datagram = datagram[:rng.randint(1, len(datagram) - 1)]
            elif kind < 0.25:
                datagram = rng.randbytes(rng.randint(1, 40))
            out.append((datagram, rng.random() < 0.1))
    return out[:count]


async def split_run(dut, idle, backpressure, run: int, datagrams) -> None:
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    source = StreamSource(dut, "i_stream", datagram_in_layout, dut.clk, period_ns=CLOCK_NS)
    source.set_pause_generator(_pauses(idle, SEED * 7919 + run))
    sink = DecodedSink(dut, _pauses(backpressure, SEED * 7919 + run + 1000))
    cocotb.start_soon(check_stream_rules(dut.clk, [source.port, sink.port], period_ns=CLOCK_NS,
                                         reset=dut.rst))
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)

    expected = []
    for datagram, error in datagrams:
        for index, byte in enumerate(datagram):
            last = index == len(datagram) - 1
            source.send_beat(data=byte, last=last, error=error and last)
        expected += expected_frames(datagram, error)
    total = sum(len(d) for d, _ in datagrams)
    await sink.wait_for(len(expected), 40 * (total + len(expected)) + 1000)
    await ClockCycles(dut.clk, 20)
    for n, (got, want) in enumerate(zip(sink.frames, expected, strict=True)):
        assert got == want, (f"frame {n}: got {len(got[0])} bytes bad={got[1]}, want "
                             f"{len(want[0])} bytes bad={want[1]}"
                             + ("" if got[1] != want[1] else " (bytes differ)"))
    good = sum(not bad for _, bad in expected)
    assert int(dut.frames.value) == good
    assert int(dut.bad_frames.value) == len(expected) - good
    # A frame (good or cut) counts as long once its length field has passed, if it says so.
    long = sum(
        1 for f, _ in expected
        if len(f) >= p.HEADER_SIZE
        and int.from_bytes(f[8:10], "little") + p.HEADER_SIZE + p.CRC_SIZE > MAX_FRAME
    )
    assert int(dut.long_frames.value) == long
    assert source.idle()


def _split_test(idle, backpressure, run):
    async def test(dut):
        rng = random.Random(SEED * 1000 + run)
        await split_run(dut, idle, backpressure, run, random_datagrams(rng, 30))

    return test


for _run, (_idle, _bp) in enumerate(PATTERN_RUNS):
    _name = f"split_{getattr(_idle, '__name__', 'none')}_{getattr(_bp, '__name__', 'none')}"
    globals()[_name] = cocotb.test(name=_name)(_split_test(_idle, _bp, _run))


@cocotb.test()
async def split_edge_cases(dut):
    """Datagrams of exactly a header and a CRC, one byte short, one byte over (a cut second
    frame), the longest frame, a last frame flagged error, and frames of max_frame bytes and
    one more."""
    rng = random.Random(SEED)
    smallest = frame_body(Frame(1, 2, 3))
    longest = frame_body(Frame(1, 2, 3, rng.randbytes(MAX_FIT)))
    datagrams = [
        (smallest, False),
        (smallest[:-1], False),
        (smallest + smallest[:1], False),
        (smallest + smallest[:13], False),
        (smallest * 3, False),
        (longest, False),
        (smallest * 2, True),
        (b"\x00", True),
        (smallest, False),
    ]
    # Frames either side of max_frame: the larger counts as long, the other not.
    for payload in (MAX_FRAME - p.HEADER_SIZE - p.CRC_SIZE, MAX_FRAME - p.HEADER_SIZE - 3):
        if 0 <= payload <= MAX_FIT:
            datagrams.append((frame_body(Frame(1, 2, 3, rng.randbytes(payload))), False))
    await split_run(dut, None, None, 99, datagrams)


# -- FramesDatagram ------------------------------------------------------------------------------

def expected_packing(groups: list[list[bytes]]) -> list[bytes]:
    """Datagrams when each group's frames come back to back and groups far apart: the host's
    greedy packing within each group."""
    return [d for group in groups for d in pack_datagrams(group, MAX_DATAGRAM)]


async def pack_run(dut, idle, backpressure, run: int, groups: list[list[bytes]],
                   gaps: list[int], *, exact: list[list[bytes]] | None) -> list[bytes]:
    """Send ``groups`` of frames, each group back to back, ``gaps`` cycles after each; check
    the datagrams, and if ``exact`` is given, that they are ``exact``'s groups packed
    greedily."""
    tb = TB(dut, frame_layout, datagram_out_layout, period_ns=CLOCK_NS, seed=SEED * 31 + run)
    tb.set_idle_generator(idle)
    tb.set_backpressure_generator(backpressure)
    await tb.reset()
    bodies = [body for group in groups for body in group]
    for group, gap in zip(groups, gaps, strict=True):
        for body in group:
            tb.source.send(body)
        await tb.source.wait()
        await ClockCycles(dut.clk, gap)
    total = sum(map(len, bodies))
    # Every frame's last byte goes out at the latest linger cycles after it came.
    timeout = 40 * total + (LINGER + 40) * len(bodies) + 1000

    async def until_all():
        while sum(len(m.data) for m in tb.sink.messages) < total:
            await RisingEdge(dut.clk)

    await with_timeout(until_all(), timeout * CLOCK_NS, "ns")
    await ClockCycles(dut.clk, LINGER + 20)
    datagrams = [m.data for m in tb.sink.messages]
    frames_out = []
    for n, datagram in enumerate(datagrams):
        frames, cut = split_datagram(datagram)
        assert frames and not cut, f"datagram {n} of {len(datagram)} bytes is not whole frames"
        if len(frames) > 1 or len(datagram) <= MAX_DATAGRAM:
            assert len(datagram) <= MAX_DATAGRAM, f"datagram {n} has {len(datagram)} bytes"
        frames_out += frames
    assert frames_out == bodies, "the frames out are not the frames in, in order"
    if exact is not None:
        want = expected_packing(exact)
        assert datagrams == want, (
            f"packing {[len(d) for d in datagrams]}, expected {[len(d) for d in want]}")
    assert int(dut.frames.value) == len(bodies)
    assert int(dut.datagrams.value) == len(datagrams)
    return datagrams


def _pack_test(idle, backpressure, run):
    async def test(dut):
        rng = random.Random(SEED * 2000 + run)
        groups, gaps = [], []
        for _ in range(12):
            groups.append([random_body(rng, large=0.15) for _ in range(rng.randint(1, 8))])
            # Well within linger (the frames join), or well past it (they do not).
            if rng.random() < 0.5:
                gaps.append(rng.randint(0, LINGER // 2))
            else:
                gaps.append(rng.randint(LINGER + 6, LINGER + 40))
        # Groups closer than linger join: merge them for the expected packing. Under an idle
        # pattern the source's own pauses may add to a gap, so the packing is checked exactly
        # only without one.
        merged: list[list[bytes]] = []
        joined = True
        for group, gap in zip(groups, gaps, strict=True):
            if merged and joined:
                merged[-1] = merged[-1] + group
            else:
                merged.append(list(group))
            joined = gap <= LINGER // 2
        await pack_run(dut, idle, backpressure, run, groups, gaps,
                       exact=merged if idle is None else None)

    return test


for _run, (_idle, _bp) in enumerate(PATTERN_RUNS):
    _name = f"pack_{getattr(_idle, '__name__', 'none')}_{getattr(_bp, '__name__', 'none')}"
    globals()[_name] = cocotb.test(name=_name)(_pack_test(_idle, _bp, _run))


@cocotb.test()
async def pack_small_frames_share(dut):
    """Small frames back to back share datagrams: fewer datagrams than frames, packed as the
    host packs them."""
    rng = random.Random(SEED + 5)
    group = [frame_body(Frame(1, 0, n, rng.randbytes(rng.randint(0, 100)))) for n in range(60)]
    datagrams = await pack_run(dut, None, None, 50, [group], [0], exact=[group])
    assert len(datagrams) < len(group)


@cocotb.test()
async def pack_guards(dut):
    """A frame over max_datagram goes out alone; so does one shorter than a header."""
    rng = random.Random(SEED + 6)
    small = frame_body(Frame(1, 0, 1, b"x"))
    huge = frame_body(Frame(1, 0, 2, rng.randbytes(MAX_DATAGRAM)))
    tb = TB(dut, frame_layout, datagram_out_layout, period_ns=CLOCK_NS, seed=SEED)
    await tb.reset()
    for body in (small, huge, small, b"abc", small, small):
        tb.source.send(body)
    await tb.sink.wait_for(5, 20000)
    await ClockCycles(dut.clk, LINGER + 20)
    got = [m.data for m in tb.sink.messages]
    assert got == [small, huge, small, b"abc", small + small], [len(d) for d in got]


@cocotb.test()
async def pack_linger_bound(dut):
    """A frame with none after it ends its datagram the cycle after ``linger`` cycles of
    waiting; the next frame joins it if and only if its first byte comes within ``linger``
    cycles of the previous frame's last byte."""
    tb = TB(dut, frame_layout, datagram_out_layout, period_ns=CLOCK_NS, seed=SEED)
    await tb.reset()
    body = frame_body(Frame(1, 0, 7, b"linger"))
    tb.source.send(body)
    await tb.sink.wait_for(1, 1000)
    message = tb.sink.messages[0]
    assert message.data == body
    waited = message.end - tb.source.accepted[-1]
    assert waited == LINGER + 1, f"the last byte went out {waited} cycles after it came"
    seen = {True: 0, False: 0}
    # None: the two frames back to back (queued together).
    for delay in [None, *range(max(LINGER - 4, 0), LINGER + 4)]:
        before = len(tb.sink.messages)
        tb.source.send(body)
        if delay is not None:
            await tb.source.wait()
            await ClockCycles(dut.clk, delay)
        tb.source.send(body)
        await tb.source.wait()
        last_in = tb.source.accepted[-len(body) - 1]
        first_in = tb.source.accepted[-len(body)]
        await ClockCycles(dut.clk, LINGER + 20)
        got = [m.data for m in tb.sink.messages[before:]]
        gap = first_in - last_in
        joined = gap <= LINGER
        seen[joined] += 1
        want = [body + body] if joined else [body, body]
        assert got == want, f"next frame {gap} cycles after: {[len(d) for d in got]}"
    # (Frames come at best a cycle apart, so with linger 0 none joins.)
    assert seen[False] and (seen[True] or LINGER == 0), seen
