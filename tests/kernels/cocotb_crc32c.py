"""cocotb testbench of the CRC-32C kernel (``hdl/kernels/crc32c.py``) under Verilator.

Run by ``tests/kernels/test_crc32c_verilator.py`` through :func:`sim.cocotb_runner.run_cocotb`,
once per beat width, which it passes as ``OFFLOAD_WIDTH``. The reference is ``google_crc32c``,
an implementation independent of the kernel's own model.

The sink also checks the stream rules on ``o_stream``: a beat offered and not taken is still
offered, unchanged, in the next cycle.

The stream models sample the handshake in the read-only phase of the cycle before the clock
edge that completes it, rather than at the edge itself: with Verilator, cocotb's edge callbacks
see the registers already updated by that edge.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Iterator

import cocotb
import google_crc32c
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import (
    ClockCycles,
    Event,
    ReadOnly,
    RisingEdge,
    SimTimeoutError,
    with_timeout,
)

from hdl.kernels.crc32c import Crc32cKernel
from hdl.stream import byte_layout

WIDTH = int(os.environ.get("OFFLOAD_WIDTH", "4"))
SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 10

# Random messages per width, spread over the idle/backpressure matrix (9 runs of 23 = 207), and
# their largest size. W=1 (a byte a cycle) sets the time: about 280k cycles with the idle gaps
# and backpressure, some 6 s at the 50k cycles/s cocotb drives this testbench at.
RANDOM_MESSAGES = 207
MAX_MESSAGE = 2048

PatternFactory = Callable[[], Iterator[bool]] | None


def random_30() -> Iterator[bool]:
    """Pause in 30% of cycles, at random."""
    rng = random.Random(SEED * 7919 + 30)
    while True:
        yield rng.random() < 0.3


def bursty() -> Iterator[bool]:
    """Runs of 1 to 32 cycles of flow, then 1 to 12 paused."""
    rng = random.Random(SEED * 7919 + 31)
    while True:
        yield from itertools.repeat(False, rng.randint(1, 32))
        yield from itertools.repeat(True, rng.randint(1, 12))


def crc_bytes(message: bytes) -> bytes:
    """The response the kernel must give: the CRC-32C, least significant byte first."""
    return google_crc32c.value(bytes(message)).to_bytes(4, "little")


class StreamSource:
    """Drives beats on an ``amaranth.lib.stream`` byte stream ``<prefix>__{valid,ready,payload}``.

    ``valid`` never waits on ``ready``, and a beat, once offered, stays unchanged until taken;
    the idle pattern only delays the offer of the next beat.
    """

    def __init__(self, dut, prefix: str, width: int, clock):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.width = width
        layout = byte_layout(width)
        self.offsets = {name: layout[name].offset for name in ("data", "nbytes", "last", "error")}
        self.clock = clock
        self.queue: deque[tuple[int, int, bool]] = deque()
        self.pause: Iterator[bool] = itertools.repeat(False)
        #: Cycle in which each accepted beat's handshake happened, in order.
        self.accepted: list[int] = []
        self.idle = Event()
        self.idle.set()
        self.valid.value = 0

    def set_pause_generator(self, factory: PatternFactory) -> None:
        self.pause = factory() if factory is not None else itertools.repeat(False)

    def pack(self, data: int, nbytes: int, last: bool) -> int:
        o = self.offsets
        return (data << o["data"]) | (nbytes << o["nbytes"]) | (int(last) << o["last"])

    def send(self, message: bytes) -> None:
        """Queue a well-formed message: full beats, then a last beat of 0 to ``width`` bytes."""
        w = self.width
        chunks = [message[i:i + w] for i in range(0, len(message), w)] or [b""]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            self.send_beat(int.from_bytes(chunk, "little"), len(chunk) if last else w, last)

    def send_beat(self, data: int, nbytes: int, last: bool) -> None:
        """Queue one raw beat (for malformed input)."""
        self.queue.append((data, nbytes, last))
        self.idle.clear()

    async def run(self) -> None:
        edge, settled = RisingEdge(self.clock), ReadOnly()
        current: tuple[int, int, bool] | None = None
        fired = False
        while True:
            await edge
            if fired:
                current = None
                if not self.queue:
                    self.idle.set()
            pause = next(self.pause)
            if current is None:
                if self.queue and not pause:
                    current = self.queue.popleft()
                    self.payload.value = self.pack(*current)
                    self.valid.value = 1
                else:
                    self.valid.value = 0
            await settled
            fired = current is not None and bool(self.ready.value)
            if fired:
                self.accepted.append(int(get_sim_time("ns")) // CLOCK_NS)


class StreamSink:
    """Takes messages from a byte stream, ``ready`` following the backpressure pattern."""

    def __init__(self, dut, prefix: str, width: int, clock):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.width = width
        layout = byte_layout(width)
        self.fields = {
            name: (layout[name].offset, (1 << layout[name].width) - 1)
            for name in ("data", "nbytes", "last", "error")
        }
        self.clock = clock
        self.pause: Iterator[bool] = itertools.repeat(False)
        #: Each message received: (bytes, error, cycle of its first beat, cycle of its last).
        self.messages: list[tuple[bytes, bool, int, int]] = []
        self.wanted = 0
        self.received = Event()
        #: Cycles in which a beat offered in the cycle before, and not taken, was withdrawn or
        #: changed.
        self.violations: list[int] = []
        self.ready.value = 0

    def set_pause_generator(self, factory: PatternFactory) -> None:
        self.pause = factory() if factory is not None else itertools.repeat(False)

    def field(self, value: int, name: str) -> int:
        offset, mask = self.fields[name]
        return (value >> offset) & mask

    async def wait_for(self, count: int, timeout_cycles: int) -> None:
        """Wait until ``count`` messages have come, failing after ``timeout_cycles``."""
        if len(self.messages) >= count:
            return
        self.wanted = count
        self.received.clear()
        try:
            await with_timeout(self.received.wait(), timeout_cycles * CLOCK_NS, "ns")
        except SimTimeoutError:
            raise AssertionError(
                f"only {len(self.messages)} of {count} responses after {timeout_cycles} cycles"
            ) from None

    async def run(self) -> None:
        edge, settled = RisingEdge(self.clock), ReadOnly()
        data = bytearray()
        error = False
        first = 0
        held: int | None = None  # the payload offered and not taken in the last cycle
        while True:
            await edge
            ready = not next(self.pause)
            self.ready.value = int(ready)
            await settled
            valid = bool(self.valid.value)
            if held is not None:
                # The stream rules: an offered beat stays offered, unchanged, until taken.
                if not valid or int(self.payload.value) != held:
                    self.violations.append(int(get_sim_time("ns")) // CLOCK_NS)
                held = None
            if valid and not ready:
                held = int(self.payload.value)
            if not (ready and valid):
                continue
            cycle = int(get_sim_time("ns")) // CLOCK_NS
            value = int(self.payload.value)
            last = bool(self.field(value, "last"))
            if not data:
                first = cycle
            nbytes = min(self.field(value, "nbytes"), self.width) if last else self.width
            data += self.field(value, "data").to_bytes(self.width, "little")[:nbytes]
            error |= bool(self.field(value, "error"))
            if last:
                self.messages.append((bytes(data), error, first, cycle))
                data, error = bytearray(), False
                if len(self.messages) >= self.wanted:
                    self.received.set()


class TB:
    """Clock, reset, and the source and sink models around the kernel."""

    def __init__(self, dut):
        self.dut = dut
        self.width = WIDTH
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        self.source = StreamSource(dut, "i_stream", WIDTH, dut.clk)
        self.sink = StreamSink(dut, "o_stream", WIDTH, dut.clk)
        cocotb.start_soon(self.source.run())
        cocotb.start_soon(self.sink.run())

    def set_idle_generator(self, factory: PatternFactory = None) -> None:
        self.source.set_pause_generator(factory)

    def set_backpressure_generator(self, factory: PatternFactory = None) -> None:
        self.sink.set_pause_generator(factory)

    async def reset(self) -> None:
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    def timeout_cycles(self, messages: list[bytes]) -> int:
        # Generous: every beat and every response beat could wait on a pause of 12 cycles.
        beats = sum(len(m) // self.width + 1 for m in messages)
        return 40 * (beats + 8 * len(messages)) + 1000


def edge_case_sizes(width: int) -> list[int]:
    return sorted({0, 1, max(width - 1, 0), width, width + 1, 2 * width, 2 * width + 1})


PATTERNS = [None, random_30, bursty]


@cocotb.test()
@cocotb.parametrize(idle_inserter=PATTERNS, backpressure_inserter=PATTERNS)
async def run_test(dut, idle_inserter, backpressure_inserter):
    """Random messages and the edge-case sizes, under one idle/backpressure pattern each."""
    tb = TB(dut)
    tb.set_idle_generator(idle_inserter)
    tb.set_backpressure_generator(backpressure_inserter)
    await tb.reset()

    run = PATTERNS.index(idle_inserter) * len(PATTERNS) + PATTERNS.index(backpressure_inserter)
    rng = random.Random(SEED * 1000 + WIDTH * 10 + run)
    count = -(-RANDOM_MESSAGES // len(PATTERNS) ** 2)
    messages = [bytes(rng.randbytes(size)) for size in edge_case_sizes(WIDTH)]
    messages += [rng.randbytes(rng.randint(0, MAX_MESSAGE)) for _ in range(count)]
    rng.shuffle(messages)

    start = get_sim_time("ns")
    for message in messages:
        tb.source.send(message)
    await tb.sink.wait_for(len(messages), tb.timeout_cycles(messages))

    assert not tb.sink.violations, f"o_stream broke the stream rules in cycles {tb.sink.violations}"
    for number, (message, (response, error, _, _)) in enumerate(
        zip(messages, tb.sink.messages, strict=True)
    ):
        assert response == crc_bytes(message), (
            f"message {number} ({len(message)} bytes): response {response.hex()}, "
            f"expected {crc_bytes(message).hex()}"
        )
        assert not error, f"message {number} ({len(message)} bytes): error set on good input"
    cycles = (get_sim_time("ns") - start) / CLOCK_NS
    tb.log.info(
        "W=%d: %d messages (%d bytes) in %d cycles", WIDTH, len(messages),
        sum(map(len, messages)), cycles,
    )


@cocotb.test(skip=WIDTH == 1)
async def malformed_last_beat(dut):
    """A last beat with ``nbytes > width`` gets a response with ``error``, and no hang.

    Its CRC is that of the message with the last beat taken as full, and the next message is
    answered as usual. (At width 1 ``nbytes`` has one bit, so it cannot exceed the width.)
    """
    tb = TB(dut)
    tb.set_backpressure_generator(random_30)
    await tb.reset()

    rng = random.Random(SEED * 1000 + WIDTH)
    w = WIDTH
    nbytes_bits = byte_layout(w)["nbytes"].width
    expected: list[tuple[bytes, bool]] = []
    for bad_nbytes in range(w + 1, 1 << nbytes_bits):
        body = rng.randbytes(w * rng.randint(0, 3))
        tail = rng.randbytes(w)
        for i in range(0, len(body), w):
            tb.source.send_beat(int.from_bytes(body[i:i + w], "little"), w, False)
        tb.source.send_beat(int.from_bytes(tail, "little"), bad_nbytes, True)
        expected.append((crc_bytes(body + tail), True))
        good = rng.randbytes(rng.randint(0, 3 * w))
        tb.source.send(good)
        expected.append((crc_bytes(good), False))

    await tb.sink.wait_for(len(expected), 100 * len(expected) + 1000)
    assert not tb.sink.violations, f"o_stream broke the stream rules in cycles {tb.sink.violations}"
    for number, ((response, error, _, _), (want, want_error)) in enumerate(
        zip(tb.sink.messages, expected, strict=True)
    ):
        assert error == want_error, f"response {number}: error {error}, expected {want_error}"
        assert response == want, f"response {number}: {response.hex()}, expected {want.hex()}"


@cocotb.test()
async def back_to_back_ii1(dut):
    """With no idle and no backpressure, the kernel takes one beat every cycle (II = 1).

    A message of 256 full beats is followed at once by more messages: every beat must be taken
    in consecutive cycles, with no bubble between messages, and each response must come a
    fixed, small number of cycles after its message's last beat.
    """
    tb = TB(dut)
    await tb.reset()

    n = 256
    # The following messages are at least as long as a response, so that responses never wait
    # on each other at the output and every one shows the kernel's own latency.
    response_beats = max(1, 4 // WIDTH)
    rng = random.Random(SEED * 1000 + WIDTH + 500)
    messages = [rng.randbytes(WIDTH * n)]
    messages += [rng.randbytes(WIDTH * rng.randint(response_beats, 64)) for _ in range(8)]
    for message in messages:
        tb.source.send(message)
    beats = sum(len(m) // WIDTH for m in messages)
    await tb.sink.wait_for(len(messages), 10 * beats + 1000)

    accepted = tb.source.accepted
    assert len(accepted) == beats
    first = accepted[0]
    gaps = [(a, b) for a, b in itertools.pairwise(accepted) if b != a + 1]
    assert not gaps, f"input beats not taken back to back; first bubble between cycles {gaps[0]}"

    ends, position = [], first - 1
    for message in messages:
        position += len(message) // WIDTH
        ends.append(position)  # cycle of the message's last beat
    latencies = []
    for number, ((response, error, start, stop), message, end) in enumerate(
        zip(tb.sink.messages, messages, ends, strict=True)
    ):
        assert response == crc_bytes(message) and not error, f"response {number} is wrong"
        assert stop - start == response_beats - 1, f"response {number} was not back to back"
        latencies.append(start - end)

    # The pipeline's depth, as the kernel declares it, plus the response queue's read latency:
    # the measured figure must be constant and within that budget.
    latency = latencies[0]
    constant = tb.sink.messages[0][2] - first - n
    tb.log.info(
        "W=%d: first response %d cycles after the first beat of %d: N + %d; last beat to "
        "response: %d cycles (kernel LATENCY %d)", WIDTH, n + constant, n, constant, latency,
        Crc32cKernel.LATENCY,
    )
    assert all(x == latency for x in latencies), f"latency varies: {latencies}"
    assert Crc32cKernel.LATENCY <= latency <= Crc32cKernel.LATENCY + 3, (
        f"{latency} cycles from last beat to response; the kernel declares LATENCY = "
        f"{Crc32cKernel.LATENCY} and the response queue adds at most 3"
    )
    assert constant <= 12, f"response came N + {constant} cycles after the first beat"
