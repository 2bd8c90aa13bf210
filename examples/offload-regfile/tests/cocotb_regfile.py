"""cocotb testbench of the regfile kernel (``offload_regfile/gateware.py``) under Verilator.

Run by ``test_regfile.py`` through offload's ``sim.cocotb_runner.run_cocotb``, with ``slots``
as ``OFFLOAD_SLOTS``. The stream models, the idle and backpressure patterns and the check of
the stream rules (on both ports, every cycle) are offload's shared ones
(``tests/cocotb_streams.py``); the reference is the package's CPU model.
"""

from __future__ import annotations

import itertools
import os
import random
import struct

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, with_timeout
from hdl.stream import byte_layout, request_layout
from tests.cocotb_streams import PATTERNS, TB, random_50

from offload_regfile import RECORD, RegfileModel
from offload_regfile.gateware import RegfileKernel

SLOTS = int(os.environ.get("OFFLOAD_SLOTS", "256"))
SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 10
OPCODE = {name: number for number, name in enumerate(RegfileKernel.operations)}

# Messages per idle/backpressure run (9 runs).
MESSAGES = 40


class RegfileTB(TB):
    def __init__(self, dut):
        super().__init__(dut, request_layout(1), byte_layout(1), period_ns=CLOCK_NS, seed=SEED)
        self.model = RegfileModel({"slots": SLOTS})
        self.expected: list[tuple[bytes, bool]] = []
        self.sent_bytes = 0

    async def reset(self) -> None:
        await super().reset()
        self.model.reset()
        # The kernel clears its registers after a reset, not taking input meanwhile.
        await ClockCycles(self.clock, SLOTS)

    def send(self, op: str, message: bytes, *, opcode: int | None = None) -> None:
        self.source.send(message, op=OPCODE[op] if opcode is None else opcode)
        self.sent_bytes += len(message)
        response = self.model.run(op if opcode is None else "unknown", message)
        self.expected.append((response.data, response.error))

    async def check(self) -> None:
        """Wait for a response to every message sent, and compare them with the model's."""
        count = len(self.expected)
        # Every request byte and its (at most three) answer bytes could wait on a pause of 12
        # cycles under the patterns.
        await self.sink.wait_for(count, 40 * (4 * self.sent_bytes + 8 * count) + 1000)
        for number, (got, (data, error)) in enumerate(zip(self.sink.messages, self.expected,
                                                          strict=True)):
            assert (got.data, got.error) == (data, error), (
                f"response {number}: {got.data.hex()} error={got.error}, expected "
                f"{data.hex()} error={error}"
            )


def random_message(rng: random.Random, op: str) -> bytes:
    n = rng.choice([0, 1, rng.randint(0, 40)])

    def index():
        return rng.choice([rng.randrange(4), rng.randrange(SLOTS), rng.randrange(65536)])

    if op == "write":
        return b"".join(struct.pack("<HI", index(), rng.getrandbits(32)) for _ in range(n))
    return b"".join(struct.pack("<H", index()) for _ in range(n))


@cocotb.test()
@cocotb.parametrize(idle_inserter=PATTERNS, backpressure_inserter=PATTERNS)
async def run_test(dut, idle_inserter, backpressure_inserter):
    """Random writes and reads, some out of range, under one idle/backpressure pattern."""
    tb = RegfileTB(dut)
    tb.set_idle_generator(idle_inserter)
    tb.set_backpressure_generator(backpressure_inserter)
    await tb.reset()
    run = PATTERNS.index(idle_inserter) * len(PATTERNS) + PATTERNS.index(backpressure_inserter)
    rng = random.Random(SEED * 1000 + SLOTS + run)
    for _ in range(MESSAGES):
        op = rng.choice(["write", "read"])
        tb.send(op, random_message(rng, op))
    await tb.check()


@cocotb.test()
async def malformed_messages(dut):
    """Partial records, unknown opcodes and empty messages: one flagged response each, and
    the kernel goes on answering."""
    tb = RegfileTB(dut)
    tb.set_backpressure_generator(random_50)
    await tb.reset()
    rng = random.Random(SEED * 1000 + 7)
    for _ in range(30):
        op = rng.choice(["write", "read"])
        message = random_message(rng, op)
        kind = rng.randrange(4)
        if kind == 0:
            message += rng.randbytes(rng.randint(1, RECORD[op] - 1))
            tb.send(op, message)
        elif kind == 1:
            tb.send(op, message, opcode=rng.choice([2, 3, 127, 255]))
        elif kind == 2:
            tb.send(op, b"")
        else:
            tb.send(op, message)
    await tb.check()


@cocotb.test()
async def reset_clears_registers(dut):
    """A reset with a message half sent and answers held: ready stays low while the kernel
    clears every register, then every read answers 0."""
    tb = RegfileTB(dut)
    await tb.reset()
    rng = random.Random(SEED * 1000 + 8)
    tb.send("write", b"".join(struct.pack("<HI", i, rng.getrandbits(32) | 1)
                              for i in range(SLOTS)))
    await tb.check()

    tb.sink.set_pause_generator(itertools.repeat(True))  # hold the output
    # Two and a half records of a message that never ends: the kernel takes them all (one
    # answer in its output register, one in its queue) and holds their answers.
    for byte in b"".join(struct.pack("<HI", i, 5) for i in range(3))[:15]:
        tb.source.send_beat(data=byte, nbytes=1, last=False, op=OPCODE["write"])
    await with_timeout(tb.source.wait(), 1000, "ns")
    await ClockCycles(tb.clock, 10)
    tb.rst.value = 1
    await ClockCycles(tb.clock, 1)
    tb.rst.value = 0
    tb.sink.set_pause_generator(None)
    low = 0
    while True:
        await RisingEdge(tb.clock)
        await ReadOnly()
        if dut.i_stream__ready.value:
            break
        low += 1
    assert low >= SLOTS - 1, f"ready came back after {low} cycles, before the clearing"
    tb.model.reset()
    await RisingEdge(tb.clock)
    # What the kernel held before the reset is dropped: only answers after it count.
    tb.sink.messages.clear()
    tb.expected.clear()
    tb.send("read", b"".join(struct.pack("<H", i) for i in range(SLOTS)))
    tb.send("write", struct.pack("<HI", 0, 9))
    await tb.check()
    assert tb.sink.messages[0].data == b"".join(struct.pack("<HI", i, 0) for i in range(SLOTS))


@cocotb.test()
async def back_to_back_writes(dut):
    """No idle, no backpressure: write records go in and their answers come out a byte every
    cycle, the first LATENCY cycles after its record's last byte."""
    tb = RegfileTB(dut)
    await tb.reset()
    rng = random.Random(SEED * 1000 + 9)
    messages = [b"".join(struct.pack("<HI", rng.randrange(SLOTS), rng.getrandbits(32))
                         for _ in range(rng.randint(1, 50))) for _ in range(6)]
    for message in messages:
        tb.send("write", message)
    await tb.check()
    accepted = tb.source.accepted
    total = sum(map(len, messages))
    assert len(accepted) == total
    assert accepted[-1] - accepted[0] == total - 1, "input not taken every cycle"
    first, last = tb.sink.messages[0].start, tb.sink.messages[-1].end
    assert last - first == total - 1, "output not sent every cycle"
    assert first - accepted[RECORD["write"] - 1] == RegfileKernel.LATENCY
    tb.log.info("%d bytes in and out in %d cycles", total, last - accepted[0] + 1)
