"""The acceptor's and learner's gateware (``hdl/kernels/paxos.py``) against their CPU models,
in Amaranth's simulator and under Verilator (cocotb, the shared ``tests/cocotb_requests.py``
testbench), with random idle input and backpressure: the same answers to the same batches, the
same requests refused (bad messages, batches that end inside a message, another opcode), and
the state kept from batch to batch as the models keep it."""

from __future__ import annotations

import functools
import json
import random

import pytest
from amaranth.sim import Simulator

from hdl.kernels.paxos import PaxosAcceptor, PaxosLearner
from hdl.kernels.paxos_format import (
    ACCEPT,
    ACCEPTED,
    PREPARE,
    PROMISE,
    Message,
    message_bytes,
    pack,
    unpack,
)
from offload.kernels.paxos import acceptor_model, learner_model

INSTANCES = 4
QUORUM = 3

ROLES = {
    "acceptor": (lambda width: PaxosAcceptor(INSTANCES, 32, width),
                 lambda: acceptor_model({"instances": INSTANCES}), [PREPARE, ACCEPT], PROMISE),
    "learner": (lambda width: PaxosLearner(INSTANCES, QUORUM, 32, width),
                lambda: learner_model({"instances": INSTANCES, "quorum": QUORUM}), [ACCEPTED],
                PREPARE),
}


def model_answer(model, data: bytes) -> tuple[bytes, bool]:
    """The kernel's CPU path's answer to a batch (up to the first message it cannot take, or
    a trailing part of one, then the error), as a pair."""
    response = model.run("handle", data)
    return response.data, response.error


def batches(seed: int, count: int, kinds: list[int], wrong: int) -> list[bytes]:
    """Random batches: mostly good messages of ``kinds`` over a few instances, rounds and
    acceptors (so every rule is met), some bad ones (``wrong`` kind, an instance outside, round
    0, acceptor 8), some cut short, some empty."""
    rng = random.Random(seed)

    def message() -> Message:
        kind = wrong if rng.random() < 0.03 else rng.choice(kinds)
        instance = INSTANCES + rng.randrange(3) if rng.random() < 0.03 else \
            rng.randrange(INSTANCES)
        round_ = 0 if rng.random() < 0.03 else rng.choice([1, 2, 3, 5, 8, 9, 0xFFFF_FFFF])
        acceptor = 8 if rng.random() < 0.03 else rng.randrange(5)
        return Message(kind, instance, round_, 0, rng.randbytes(rng.randrange(33)), acceptor)

    out = []
    for _ in range(count):
        data = b"".join(pack(message()) for _ in range(rng.randrange(5)))
        if data and rng.random() < 0.1:
            data = data[:-rng.randrange(1, 40)]
        out.append(data)
    return out


def run_requests(dut, requests: list[tuple[int, bytes, bool]], seed: int,
                 width: int = 1) -> list[tuple[bytes, bool]]:
    """Each request ``(op, data, tail)`` through the kernel in Amaranth's simulator, with random
    idle input and backpressure: of the opcode ``op``, and with ``tail``, the data's beats
    without ``last`` then an empty beat with it. Each answer's bytes and ``error``."""
    answers: list[tuple[bytes, bool]] = []

    async def testbench(ctx):
        rng = random.Random(seed)
        for op, request, tail in requests:
            beats = [(request[k:k + width], False) for k in range(0, len(request), width)]
            if tail or not beats:
                beats.append((b"", True))
            else:
                beats[-1] = (beats[-1][0], True)
            out, error, cycles = bytearray(), None, 0
            while error is None:
                assert cycles < 20_000, "no answer"
                offer = bool(beats) and rng.random() < 0.7
                ctx.set(dut.i_stream.valid, offer)
                if offer:
                    data, last = beats[0]
                    ctx.set(dut.i_stream.payload.data,
                            int.from_bytes(data.ljust(width, b"\0"), "little"))
                    ctx.set(dut.i_stream.payload.nbytes, len(data))
                    ctx.set(dut.i_stream.payload.last, last)
                    ctx.set(dut.i_stream.payload.op, op)
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


def run_gateware(dut, requests: list[bytes], width: int, seed: int) -> list[tuple[bytes, bool]]:
    """Requests of operation 0 whose last beat carries ``last``."""
    return run_requests(dut, [(0, request, False) for request in requests], seed, width)


@pytest.mark.parametrize("width", [8, 2])
@pytest.mark.parametrize("role", list(ROLES))
def test_gateware_answers_as_the_model(role, width):
    make, model_of, kinds, wrong = ROLES[role]
    requests = batches(width, 80, kinds, wrong)
    model = model_of()
    want = [model_answer(model, r) for r in requests]
    got = run_gateware(make(width), requests, width, seed=width)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"batches {bad} answered otherwise than the model"
    # Not vacuous: the answers hold every kind of answer, and some requests are refused.
    size = message_bytes()
    answered = {unpack(data[k:k + size]).type for data, _ in want
                for k in range(0, len(data), size)}
    assert answered == ({2, 4, 5} if role == "acceptor" else {6})
    assert any(error for _, error in want) and not all(error for _, error in want)


# -- under Verilator ---------------------------------------------------------------------------

COCOTB_TESTS = 9  # the testbench's eight idle/backpressure runs and its mutations run


def requests_document(role: str, width: int, path: str) -> dict:
    """The testbench's requests for ``role``: each run a fresh model's answers through the
    run's batches (every cocotb test starts from a reset), some batches ending with an empty
    beat, some of another opcode; and mutated batches (random bytes changed) as the last
    run."""
    _, model_of, kinds, wrong = ROLES[role]
    rng = random.Random(width)
    runs = []
    for run in range(COCOTB_TESTS):
        model = model_of()
        requests = []
        for n, data in enumerate(batches(100 * width + run, 25, kinds, wrong)):
            if run == COCOTB_TESTS - 1 and data:  # the mutations run
                data = bytearray(data)
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            op = 1 if rng.random() < 0.04 else 0
            out, error = model_answer(model, data) if op == 0 else (b"", True)
            requests.append({"op": op, "data": data.hex(), "tail": rng.random() < 0.2,
                             "want": out.hex(), "error": error, "what": f"batch {n}"})
        runs.append(requests)
    document = {"width": width, "runs": runs[:-1], "mutations": runs[-1]}
    with open(path, "w") as f:
        json.dump(document, f)
    return document


def cocotb_requests(make, name: str, role: str, width: int, tmp_path) -> None:
    """The shared cocotb testbench (``tests/cocotb_requests.py``) on the kernel ``make()``
    builds, under Verilator: :func:`requests_document`'s runs and mutations at ``width``, with
    random idle input and backpressure, every answer as the model's."""
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    path = str(tmp_path / "requests.json")
    run_document(make, name, path, requests_document(role, width, path), tmp_path)


def run_document(make, name: str, path: str, document: dict, tmp_path,
                 tests: int = COCOTB_TESTS) -> None:
    """The shared cocotb testbench on the kernel ``make()`` builds, with the requests
    ``document`` (written at ``path``): every test run, none skipped, and the document not
    vacuous (some requests refused, not all). Any kernel's tests use it."""
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    from sim.cocotb_runner import run_cocotb
    from sim.toolchain import ToolchainError

    try:
        result = run_cocotb(make, name, "tests.cocotb_requests", tmp_path,
                            parameters={"requests": path}, timeout_s=600)
    except ToolchainError as exc:
        pytest.skip(f"cocotb needs Verilator: {exc}")
    assert result.tests == tests and result.skipped == 0
    refused = sum(r["error"] for run in document["runs"] for r in run)
    assert 0 < refused < sum(len(run) for run in document["runs"])


@pytest.mark.parametrize("role", list(ROLES))
def test_cocotb(role, tmp_path):
    cocotb_requests(functools.partial(ROLES[role][0], 8), f"paxos_{role}_i{INSTANCES}", role, 8,
                    tmp_path)
