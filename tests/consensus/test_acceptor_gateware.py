"""The acceptor's gateware (``hdl/kernels/paxos.py``) against its CPU model, in Amaranth's
simulator with random idle input and backpressure: the same answers to the same batches,
the same requests refused (bad messages, batches that end inside a message), and the state
kept from batch to batch as the model keeps it."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hdl.kernels.paxos import PaxosAcceptor
from hdl.kernels.paxos_format import (
    ACCEPT,
    PREPARE,
    PROMISE,
    Message,
    message_bytes,
    pack,
    unpack,
)
from offload.consensus import AcceptorModel, BadMessage

INSTANCES = 4


def model_answer(model: AcceptorModel, data: bytes) -> tuple[bytes, bool]:
    """The answers to a batch, as the gateware gives them: up to the first message it cannot
    take (or a trailing part of one), then the error."""
    out, size = bytearray(), message_bytes()
    for k in range(0, len(data) - len(data) % size, size):
        try:
            out += pack(model.handle(unpack(data[k:k + size])))
        except BadMessage:
            return bytes(out), True
    return bytes(out), len(data) % size != 0


def batches(seed: int, count: int) -> list[bytes]:
    """Random batches: mostly good 1A/2A messages over a few instances and rounds (so promises
    and NACKs both come), some bad ones, some cut short, some empty."""
    rng = random.Random(seed)

    def message() -> Message:
        kind = PROMISE if rng.random() < 0.03 else rng.choice([PREPARE, ACCEPT])
        instance = INSTANCES + rng.randrange(3) if rng.random() < 0.03 else \
            rng.randrange(INSTANCES)
        round_ = 0 if rng.random() < 0.03 else rng.choice([1, 2, 3, 5, 8, 9, 0xFFFF_FFFF])
        acceptor = 8 if rng.random() < 0.03 else rng.randrange(3)
        return Message(kind, instance, round_, 0, rng.randbytes(rng.randrange(33)), acceptor)

    out = []
    for _ in range(count):
        data = b"".join(pack(message()) for _ in range(rng.randrange(5)))
        if data and rng.random() < 0.1:
            data = data[:-rng.randrange(1, 40)]
        out.append(data)
    return out


def run_gateware(requests: list[bytes], width: int, seed: int) -> list[tuple[bytes, bool]]:
    dut = PaxosAcceptor(INSTANCES, 32, width)
    answers: list[tuple[bytes, bool]] = []

    async def testbench(ctx):
        rng = random.Random(seed)
        for request in requests:
            beats = [request[k:k + width] for k in range(0, len(request), width)] or [b""]
            out, error, cycles = bytearray(), None, 0
            while error is None:
                assert cycles < 20_000, "no answer"
                offer = bool(beats) and rng.random() < 0.7
                ctx.set(dut.i_stream.valid, offer)
                if offer:
                    ctx.set(dut.i_stream.payload.data,
                            int.from_bytes(beats[0].ljust(width, b"\0"), "little"))
                    ctx.set(dut.i_stream.payload.nbytes, len(beats[0]))
                    ctx.set(dut.i_stream.payload.last, len(beats) == 1)
                ready = rng.random() < 0.6
                ctx.set(dut.o_stream.ready, ready)
                await ctx.delay(1e-9)
                if offer and ctx.get(dut.i_stream.ready):
                    beats.pop(0)
                if ready and ctx.get(dut.o_stream.valid):
                    n = ctx.get(dut.o_stream.payload.nbytes)
                    last = ctx.get(dut.o_stream.payload.last)
                    assert last or n == width, "a beat but the last is not full"
                    out += ctx.get(dut.o_stream.payload.data).to_bytes(width, "little")[:n]
                    if last:
                        error = bool(ctx.get(dut.o_stream.payload.error))
                await ctx.tick()
                cycles += 1
            answers.append((bytes(out), error))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return answers


@pytest.mark.parametrize("width", [8, 2])
def test_acceptor_gateware_answers_as_the_model(width):
    requests = batches(width, 60)
    model = AcceptorModel(INSTANCES)
    want = [model_answer(model, r) for r in requests]
    got = run_gateware(requests, width, seed=width)
    wrong = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not wrong, f"batches {wrong} answered otherwise than the model"
    # Not vacuous: the batches held promises, votes, NACKs and refusals.
    kinds = {m.type for data, _ in want for m in (unpack(data[k:k + message_bytes()])
                                                  for k in range(0, len(data), message_bytes()))}
    assert kinds == {2, 4, 5}
    assert any(error for _, error in want) and not all(error for _, error in want)
