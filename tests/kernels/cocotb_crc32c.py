"""cocotb testbench of the CRC-32C kernel (``hdl/kernels/crc32c.py``) under Verilator.

Run by ``tests/kernels/test_crc32c_verilator.py`` through :func:`sim.cocotb_runner.run_cocotb`,
once per beat width, which it passes as ``OFFLOAD_WIDTH``. The reference is ``google_crc32c``,
an implementation independent of the kernel's own model. The stream models, the idle and
backpressure patterns and the stream-rule check (on ``i_stream`` and ``o_stream``, every cycle)
are the shared ones of ``tests/cocotb_streams.py``.
"""

from __future__ import annotations

import itertools
import os
import random

import cocotb
import google_crc32c
from cocotb.simtime import get_sim_time

from hdl.kernels.crc32c import Crc32cKernel
from hdl.stream import byte_layout
from tests.cocotb_streams import PATTERNS, TB, payload_layout, random_50

WIDTH = int(os.environ.get("OFFLOAD_WIDTH", "4"))
SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 10

# Random messages per width, spread over the idle/backpressure matrix (9 runs of 23 = 207), and
# their largest size. W=1 (a byte a cycle) sets the time: some 400k cycles with the idle gaps
# and backpressure, about 10 s at the 40k cycles/s cocotb drives this testbench at.
RANDOM_MESSAGES = 207
MAX_MESSAGE = 2048


def crc_bytes(message: bytes) -> bytes:
    """The response the kernel must give: the CRC-32C, least significant byte first."""
    return google_crc32c.value(bytes(message)).to_bytes(4, "little")


class Crc32cTB(TB):
    """The shared testbench shape, on the kernel's streams of ``WIDTH`` bytes a beat."""

    def __init__(self, dut):
        kernel = Crc32cKernel(WIDTH)  # for its port layouts only
        super().__init__(dut, payload_layout(kernel, "i_stream"),
                         payload_layout(kernel, "o_stream"), period_ns=CLOCK_NS, seed=SEED)


def edge_case_sizes(width: int) -> list[int]:
    return sorted({0, 1, max(width - 1, 0), width, width + 1, 2 * width, 2 * width + 1})


@cocotb.test()
@cocotb.parametrize(idle_inserter=PATTERNS, backpressure_inserter=PATTERNS)
async def run_test(dut, idle_inserter, backpressure_inserter):
    """Random messages and the edge-case sizes, under one idle/backpressure pattern each."""
    tb = Crc32cTB(dut)
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

    for number, (message, response) in enumerate(zip(messages, tb.sink.messages, strict=True)):
        assert response.data == crc_bytes(message), (
            f"message {number} ({len(message)} bytes): response {response.data.hex()}, "
            f"expected {crc_bytes(message).hex()}"
        )
        assert not response.error, (
            f"message {number} ({len(message)} bytes): error set on good input"
        )
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
    tb = Crc32cTB(dut)
    tb.set_backpressure_generator(random_50)
    await tb.reset()

    rng = random.Random(SEED * 1000 + WIDTH)
    w = WIDTH
    nbytes_bits = byte_layout(w)["nbytes"].width
    expected: list[tuple[bytes, bool]] = []
    for bad_nbytes in range(w + 1, 1 << nbytes_bits):
        body = rng.randbytes(w * rng.randint(0, 3))
        tail = rng.randbytes(w)
        for i in range(0, len(body), w):
            tb.source.send_beat(data=int.from_bytes(body[i:i + w], "little"), nbytes=w,
                                last=False)
        tb.source.send_beat(data=int.from_bytes(tail, "little"), nbytes=bad_nbytes, last=True)
        expected.append((crc_bytes(body + tail), True))
        good = rng.randbytes(rng.randint(0, 3 * w))
        tb.source.send(good)
        expected.append((crc_bytes(good), False))

    await tb.sink.wait_for(len(expected), 100 * len(expected) + 1000)
    for number, (response, (want, want_error)) in enumerate(
        zip(tb.sink.messages, expected, strict=True)
    ):
        assert response.error == want_error, (
            f"response {number}: error {response.error}, expected {want_error}"
        )
        assert response.data == want, (
            f"response {number}: {response.data.hex()}, expected {want.hex()}"
        )


@cocotb.test()
async def back_to_back_ii1(dut):
    """With no idle and no backpressure, the kernel takes one beat every cycle (II = 1).

    A message of 256 full beats is followed at once by more messages: every beat must be taken
    in consecutive cycles, with no bubble between messages, and each response must come a
    fixed, small number of cycles after its message's last beat.
    """
    tb = Crc32cTB(dut)
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
    for number, (response, message, end) in enumerate(
        zip(tb.sink.messages, messages, ends, strict=True)
    ):
        assert response.data == crc_bytes(message) and not response.error, (
            f"response {number} is wrong"
        )
        assert response.end - response.start == response_beats - 1, (
            f"response {number} was not back to back"
        )
        latencies.append(response.start - end)

    # The pipeline's depth, as the kernel declares it, plus the response queue's read latency:
    # the measured figure must be constant and within that budget.
    latency = latencies[0]
    constant = tb.sink.messages[0].start - first - n
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
