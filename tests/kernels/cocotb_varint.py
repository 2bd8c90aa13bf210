"""cocotb testbench of the varint kernel (``hdl/kernels/varint.py``) under Verilator.

Run by ``tests/kernels/test_varint.py`` through :func:`sim.cocotb_runner.run_cocotb`. Good
messages are checked against protobuf's own varint and zigzag code, and every message, good or
malformed, against the kernel's CPU model (``offload/kernels/varint.py``), byte for byte and
``error`` flag. The stream models, the idle and backpressure patterns and the stream-rule check
are the shared ones of ``tests/cocotb_streams.py``.
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from google.protobuf.internal import encoder, wire_format

from hdl.kernels.varint import VarintKernel
from offload.kernels.varint import VarintModel, varint_bytes
from tests.cocotb_streams import PATTERNS, TB, payload_layout

SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 10

#: Messages per run of the idle/backpressure matrix (9 runs).
MESSAGES = 30

_U64 = (1 << 64) - 1


class VarintTB(TB):
    """The shared testbench shape, on the kernel's byte streams."""

    def __init__(self, dut):
        kernel = VarintKernel()  # for its port layouts only
        super().__init__(dut, payload_layout(kernel, "i_stream"),
                         payload_layout(kernel, "o_stream"), period_ns=CLOCK_NS, seed=SEED)


def protobuf_encode(values: list[int], signed: bool) -> bytes:
    if signed:
        values = [wire_format.ZigZagEncode(v) for v in values]
    return b"".join(encoder._VarintBytes(v & _U64) for v in values)


def random_message(rng: random.Random) -> tuple[str, bytes, bytes | None]:
    """``(op, request, protobuf's answer or None for a malformed request)``."""
    op = rng.choice(VarintKernel.operations)
    signed = rng.random() < 0.5
    values = [rng.getrandbits(rng.randint(0, 64)) for _ in range(rng.choice([0, 1, 4, 20]))]
    if signed:
        values = [v - (1 << 63) if v >> 63 else v for v in values]  # as int64
    packed = b"".join((v & _U64).to_bytes(8, "little") for v in values)
    varints = protobuf_encode(values, signed)
    flags = bytes([int(signed)])
    if op == "encode":
        if rng.random() < 0.1:
            return op, flags + packed + rng.randbytes(rng.randint(1, 7)), None
        return op, flags + packed, varints
    kind = rng.random()
    if kind < 0.1:
        return op, flags + varints + b"\x80" * rng.randint(1, 12), None
    if kind < 0.2:
        return op, flags + varints + b"\xff" * 9 + bytes([rng.randrange(2, 256)]), None
    if kind < 0.3:
        return op, flags + rng.randbytes(rng.randint(0, 40)), None
    return op, flags + varints, packed


@cocotb.test()
@cocotb.parametrize(idle_inserter=PATTERNS, backpressure_inserter=PATTERNS)
async def run_test(dut, idle_inserter, backpressure_inserter):
    """Random messages of both operations, good and malformed, under one idle/backpressure
    pattern each."""
    tb = VarintTB(dut)
    tb.set_idle_generator(idle_inserter)
    tb.set_backpressure_generator(backpressure_inserter)
    await tb.reset()

    run = PATTERNS.index(idle_inserter) * len(PATTERNS) + PATTERNS.index(backpressure_inserter)
    rng = random.Random(SEED * 1000 + run)
    messages = [random_message(rng) for _ in range(MESSAGES)]
    messages += [("encode", b"", b""), ("decode", b"\x01", b"")]
    rng.shuffle(messages)
    opcode = {name: n for n, name in enumerate(VarintKernel.operations)}
    for op, request, _ in messages:
        tb.source.send(request, op=opcode[op])
    await tb.sink.wait_for(len(messages), 8 * tb.timeout_cycles([m[1] for m in messages]))

    model = VarintModel({})
    for number, ((op, request, good), response) in enumerate(
        zip(messages, tb.sink.messages, strict=True)
    ):
        want = model.run(op, request)
        assert (response.data, response.error) == (want.data, want.error), (
            f"message {number} ({op} {request.hex()}): answered {response.data.hex()} "
            f"error={response.error}, the model {want.data.hex()} error={want.error}"
        )
        if good is not None:
            assert response.data == good and not response.error, (
                f"message {number} ({op} {request.hex()}): not protobuf's {good.hex()}"
            )


@cocotb.test()
async def one_byte_a_cycle(dut):
    """With no idle and no backpressure, 8-byte values go in and 1-byte varints come out at
    one byte a cycle."""
    tb = VarintTB(dut)
    await tb.reset()
    values = np.arange(100, dtype=np.uint64)
    tb.source.send(b"\0" + values.astype("<u8").tobytes(), op=0)
    await tb.sink.wait_for(1, 2000)
    assert tb.sink.messages[0].data == varint_bytes(values)
    accepted = tb.source.accepted
    assert accepted[-1] - accepted[0] == len(accepted) - 1, "input beats not back to back"
