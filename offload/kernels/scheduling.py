"""The queue arbitration kernels: ``scheduler`` (strict priority, round robin, weighted round
robin, deficit round robin over up to 16 queues) and ``pifo`` (a push-in first-out queue).

``device.scheduler(arrivals)`` takes a trace of arrivals ``(time, queue, length)`` and answers
the departures :class:`~offload.scheduling.Departure` ``(time, queue, length, index)`` of a
server that takes one step a cycle, as :func:`offload.scheduling.schedule` defines it, packet
for packet. The policy, the weights (``wrr``) or byte quanta (``drr``) and the packets each
queue holds (``depth``) are build parameters: ``offload.open("sim", kernels=["scheduler"],
params={"scheduler": {"policy": "drr", "quanta": "1500,3000"}})``. Each call is a trace of its
own (the queues start empty). A trace the scheduler cannot take (a queue it does not have, a
packet of length 0, a time before the last, an arrival to a full queue) is a
:class:`~offload.KernelError` naming the arrival, on every device.

``device.pifo.push(rank, item)``, ``device.pifo.pop() -> (rank, item)`` and
``device.pifo.run([("push", rank, item), ("pop",), ...]) -> [(rank, item), ...]`` (a batch, the
pops' results) work on a PIFO of ``capacity`` entries that keeps its state between calls (a
stateful kernel: ``device.reset("pifo")`` empties it). Ranks are 16-bit, items 32-bit; the
smallest rank pops first, the first pushed among equal ranks. A push to a full PIFO or a pop
from an empty one is a :class:`~offload.KernelError`; in a batch, the operations before it have
taken effect and those after it have not.

The records on the link are :mod:`hdl.kernels.scheduling_format`'s; the CPU paths are
:mod:`offload.scheduling.models`'; the gateware is :mod:`hdl.kernels.scheduler` and
:mod:`hdl.kernels.pifo`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hdl.kernels.scheduling_format import (
    ARRIVAL_BYTES,
    DEPARTURE_BYTES,
    MAX_ITEM,
    MAX_LENGTH,
    MAX_QUEUES,
    MAX_RANK,
    MAX_TIME,
    OP_BYTES,
    POP,
    POPPED_BYTES,
    PUSH,
    REFUSED,
    pack_arrival,
    pack_op,
    unpack_departure,
    unpack_popped,
)
from hdl.link.protocol import MAX_RESPONSE

from ..scheduling.models import (
    POLICIES,
    Arrival,
    Departure,
    PifoModel,
    TraceError,
    check_policy,
    pifo_answer,
    refusal_text,
    scheduler_answer,
    serve,
)
from . import KernelSpec, Operation, Param, ParamError, Response

__all__ = ["SCHEDULER", "PIFO", "scheduler_config"]

#: Departure bytes a scheduler may owe from one frame of a trace into the next: a record for
#: every packet its queues hold. The link's response frames are 1,024 bytes; half of them is
#: the most this may take, so ``queues * depth`` is 64 packets at most.
MAX_HELD = MAX_RESPONSE // 2 // DEPARTURE_BYTES


# -- parameters --------------------------------------------------------------------------------

def _policy(value: object) -> str:
    text = str(value).strip().lower()
    if text not in POLICIES:
        raise ParamError(f"scheduler parameter policy is one of {', '.join(POLICIES)}, not "
                         f"{value!r}")
    return text


def _numbers(name: str, low: int, high: int):
    """A parameter of one number per queue (or one for all): canonical text ``"1,2,3"``."""
    def convert(value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            values = [value]
        elif isinstance(value, str):
            parts = [p for p in re.split(r"[\s,;/]+", value.strip()) if p]
            try:
                values = [int(p, 0) for p in parts]
            except ValueError:
                raise ParamError(f"scheduler parameter {name} takes numbers separated by "
                                 f"commas, not {value!r}") from None
        elif isinstance(value, Sequence):
            values = list(value)
        else:
            raise ParamError(f"scheduler parameter {name} takes a number or one a queue, not "
                             f"{value!r}")
        if not values or len(values) > MAX_QUEUES or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
                for v in values):
            raise ParamError(f"scheduler parameter {name} takes 1 to {MAX_QUEUES} numbers "
                             f"from {low} to {high}, not {value!r}")
        return ",".join(map(str, values))
    return convert


def scheduler_config(params: Mapping[str, Any]) -> dict:
    """A scheduler build's parameters as the model and the gateware take them: ``queues``,
    ``policy``, ``weights`` and ``quanta`` (tuples, one a queue), ``depth``; a
    :class:`ParamError` for weights or quanta whose count is neither 1 nor ``queues``, or more
    packets held than a response frame can owe."""
    queues, depth = int(params["queues"]), int(params["depth"])
    out: dict[str, Any] = {"queues": queues, "policy": str(params["policy"]), "depth": depth}
    for name in ("weights", "quanta"):
        values = tuple(int(v) for v in str(params[name]).split(","))
        if len(values) == 1:
            values *= queues
        if len(values) != queues:
            raise ParamError(f"scheduler parameter {name} has {len(values)} values for "
                             f"{queues} queues: give one, or one a queue")
        out[name] = values
    check_policy(queues, out["policy"], out["weights"], out["quanta"])
    if queues * depth > MAX_HELD:
        raise ParamError(f"a scheduler of {queues} queues of {depth} packets holds "
                         f"{queues * depth}; the link allows {MAX_HELD} (queues x depth), "
                         "the departures one frame may owe the next")
    return out


# -- the scheduler -----------------------------------------------------------------------------

class _SchedulerModel:
    def __init__(self, params: Mapping[str, Any]):
        self.config = scheduler_config(params)

    def reset(self) -> None:
        pass

    def run(self, op: str, request: bytes) -> Response:
        c = self.config
        data, error = scheduler_answer(request, c["queues"], c["policy"], weights=c["weights"],
                                       quanta=c["quanta"], capacity=c["depth"])
        return Response(data, error)


def _trace(arrivals) -> list[Arrival]:
    """The arrivals as :class:`Arrival` s, each checked to fit its record (``TypeError`` /
    ``ValueError`` naming the arrival otherwise)."""
    if isinstance(arrivals, np.ndarray):
        if arrivals.ndim != 2 or arrivals.shape[1] != 3:
            raise TypeError("an array of arrivals has 3 columns (time, queue, length), not "
                            f"the shape {arrivals.shape}")
        arrivals = arrivals.tolist()
    if isinstance(arrivals, (str, bytes)) or not isinstance(arrivals, Sequence):
        raise TypeError("scheduler takes a list of arrivals (time, queue, length), not "
                        f"{type(arrivals).__name__}")
    trace = []
    for k, a in enumerate(arrivals):
        if not isinstance(a, Arrival):
            if not isinstance(a, Sequence) or len(a) != 3:
                raise TypeError(f"arrival {k} is (time, queue, length), not {a!r}")
            a = Arrival(*a)
        for field, value, high in (("time", a.time, MAX_TIME), ("queue", a.queue, 255),
                                   ("length", a.length, MAX_LENGTH)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
                raise ValueError(f"arrival {k}: {field} is an integer from 0 to {high}, not "
                                 f"{value!r}")
        trace.append(a)
    return trace


def _encode_trace(params, arrivals) -> list[bytes]:
    return [b"".join(pack_arrival(a.time, a.queue, a.length) for a in _trace(arrivals))]


def _decode_trace(params, responses, arrivals) -> list[Departure]:
    # The arrivals were checked when the call was encoded: only their queues and lengths now.
    rows = arrivals.tolist() if isinstance(arrivals, np.ndarray) else arrivals
    trace = [a if isinstance(a, Arrival) else Arrival(*a) for a in rows]
    waiting: dict[int, list[int]] = {}
    for index, a in enumerate(trace):
        waiting.setdefault(a.queue, []).append(index)
    taken = dict.fromkeys(waiting, 0)
    data = responses[0]
    out = []
    for k in range(0, len(data), DEPARTURE_BYTES):
        time, queue = unpack_departure(data[k:k + DEPARTURE_BYTES])
        index = waiting[queue][taken[queue]]
        taken[queue] += 1
        out.append(Departure(time, queue, trace[index].length, index))
    return out


def _trace_error(params, response, arrivals) -> str:
    c = scheduler_config(params)
    try:
        for _ in serve(_trace(arrivals), False, c["queues"], c["policy"], c["weights"],
                       c["quanta"], c["depth"]):
            pass
    except TraceError as exc:
        return str(exc)
    return "the trace was refused"


def _scheduler_workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
    c = scheduler_config(params)
    return "run", (bursty_trace(rng, max(1, size // ARRIVAL_BYTES), c),)


def bursty_trace(rng: random.Random, count: int, config: Mapping[str, Any]) -> list[Arrival]:
    """``count`` arrivals in bursts (several packets of several queues in one cycle, then a
    gap), lengths from 64 to 1,500 bytes, that never overfill a queue of ``config`` (checked
    on the model).

    Each queue has a bucket of up to half its depth in packets, filled at one packet every
    ``gap`` cycles, ``gap`` the longest a packet can wait for its queue's turn with every
    queue busy; a burst spends what a queue's bucket holds. If the model still finds a queue
    overfilled, the gap is doubled."""
    from ..scheduling.models import schedule

    queues, depth = config["queues"], config["depth"]
    turns = -(-1500 // min(config["quanta"])) if config["policy"] == "drr" else 1
    gap = queues * (turns + 1)
    burst = max(1, depth // 2)
    while True:
        trace: list[Arrival] = []
        credit = [float(burst)] * queues
        t = last = 0
        while len(trace) < count:
            for q in range(queues):
                credit[q] = min(burst, credit[q] + (t - last) / gap)
            last = t
            for q in rng.sample(range(queues), rng.randint(1, queues)):
                n = min(rng.randint(0, int(credit[q])), count - len(trace))
                credit[q] -= n
                trace += [Arrival(t, q, rng.choice([64, 64, 128, 576, 1500,
                                                    rng.randint(40, 1500)])) for _ in range(n)]
            t += rng.choice([1, 1, 2, gap, 2 * gap, burst * gap])
        try:
            schedule(trace, queues, config["policy"], weights=config["weights"],
                     quanta=config["quanta"], capacity=depth)
            return trace
        except TraceError:
            gap *= 2


#: The traces each policy is measured on in the bench: every queue given this many packets
#: at cycle 0 (backlogged throughout), and the bench workload's bursty trace.
SATURATED_PACKETS = 64


def bench_policies(queues: int) -> dict[str, dict]:
    """The builds the bench compares: each policy over ``queues`` queues, ``wrr`` with
    weights ``queues, queues - 1, ..., 1`` and ``drr`` with quanta of 1,500 bytes times the
    same, so that both aim at one set of shares."""
    weights = ",".join(str(queues - q) for q in range(queues))
    quanta = ",".join(str(1500 * (queues - q)) for q in range(queues))
    return {"sp": {"policy": "sp"}, "rr": {"policy": "rr"},
            "wrr": {"policy": "wrr", "weights": weights},
            "drr": {"policy": "drr", "quanta": quanta}}


def scheduler_bench(params, op: str, args: tuple, *, rows: bool = True) -> dict:
    """Beyond the rates per decision: for each policy on the same traces, grants per cycle,
    Jain's index and the lag behind a fluid share (the model's departures, which the gateware
    reproduces packet for packet), the CPU model's decisions per second, the gateware's
    cycles per decision (Verilator) and decisions per second at each board's fmax."""
    from boards import BOARDS
    from boards.build import BuildError

    from ..bench import DERIVED, MEASURED, time_call
    from ..build import build_kernel
    from ..gateware import kernel_label
    from ..scheduling.fairness import backlogged_service, busy_cycles, gps_lag, jain, shares
    from ..scheduling.models import schedule

    (trace,) = args
    base = scheduler_config(params)
    if not rows:  # the items alone (a sweep's): the decisions of this build's policy
        out = schedule(trace, base["queues"], base["policy"], weights=base["weights"],
                       quanta=base["quanta"])
        return {"items": busy_cycles(trace, out), "unit": "decisions", "rows": []}
    rng = random.Random(7)
    saturated = [Arrival(0, q, rng.choice([64, 576, 1500, rng.randint(40, 1500)]))
                 for _ in range(SATURATED_PACKETS) for q in range(base["queues"])]
    table = []
    decisions_here = 0
    for policy, overrides in bench_policies(base["queues"]).items():
        values = SCHEDULER.resolve({**params, **overrides})
        c = scheduler_config(values)
        kw = {"weights": c["weights"], "quanta": c["quanta"]}
        share = shares(policy, c["queues"], **kw)
        full = schedule(saturated, c["queues"], policy, **kw)
        out = schedule(trace, c["queues"], policy, **kw)
        steps = busy_cycles(trace, out)
        if policy == base["policy"]:
            decisions_here = steps
        served = backlogged_service(saturated, full, c["queues"])
        table += [
            (f"{policy}: grants per cycle, all queues backlogged",
             len(full) / busy_cycles(saturated, full), "grants/cycle",
             f"{len(full)} packets over {busy_cycles(saturated, full)} busy cycles"),
            (f"{policy}: grants per cycle, bursty trace", len(out) / steps, "grants/cycle",
             f"{len(out)} packets over {steps} busy cycles"),
            (f"{policy}: Jain's index, all queues backlogged",
             jain([x / w for x, w in zip(served, share, strict=True)]), "",
             f"bytes sent per unit of share while all {c['queues']} queues were backlogged "
             f"(shares {', '.join(f'{w:g}' for w in share)})"),
            (f"{policy}: largest lag behind the fluid share, all backlogged",
             gps_lag(saturated, full, c["queues"], share), "bytes",
             "GPS over the same work; a queue's lag restarts when it empties"),
            (f"{policy}: largest lag behind the fluid share, bursty trace",
             gps_lag(trace, out, c["queues"], share), "bytes",
             f"{len(trace)} arrivals in bursts"),
        ]
        seconds = time_call(lambda kw=kw, policy=policy, n=c["queues"]: schedule(
            trace, n, policy, **kw))
        table.append((f"{policy}: CPU model decisions per second", steps / seconds,
                     "decisions/s", f"offload.scheduling.schedule, {steps} decisions, best "
                     "of 5"))
        # The gateware, as each board builds it (its width): cycles a decision, taking the
        # arrivals in included, measured; then decisions per second at the board's fmax.
        per_width: dict[int, float] = {}
        for board in sorted(BOARDS):
            at = {**values, "width": SCHEDULER.resolve(board=board)["width"]}
            width = int(at["width"])
            if width not in per_width:
                result = _harness(at).run([_encode_trace(at, trace)[0]])
                per_width[width] = result.active_cycles / steps
                table.append((f"{policy}: gateware cycles per decision, {width} B/cycle",
                             per_width[width], "cycles",
                             f"Verilator harness, {result.active_cycles} cycles for {steps} "
                             f"decisions and {len(trace)} arrivals taken in "
                             f"({kernel_label(SCHEDULER, at)})", MEASURED))
            per = per_width[width]
            try:
                build = build_kernel(board, "scheduler", params=at)
            except BuildError as exc:
                table.append((f"{policy}: decisions per second on {board} at fmax",
                             float("nan"), "decisions/s", f"not built: {exc}"))
                continue
            table.append((f"{policy}: decisions per second on {board} at fmax",
                         build.fmax_mhz * 1e6 / per, "decisions/s",
                         f"fmax {build.fmax_mhz:.1f} MHz / {per:.2f} cycles a decision at "
                         f"{width} B/cycle", DERIVED))
    return {"items": decisions_here, "unit": "decisions", "rows": table}


def _harness(values):
    from sim.harness import StreamHarness

    from ..gateware import kernel_label

    return StreamHarness.for_component(lambda: SCHEDULER.component(**values),
                                       kernel_label(SCHEDULER, values), int(values["width"]))


def _scheduler_strategies(params) -> dict:
    from hypothesis import strategies as st

    c = scheduler_config(params)
    top = max(c["quanta"])

    @st.composite
    def traces(draw):
        # Bursts at one time, idle gaps, queues that empty and refill, lengths from 1 to past
        # the largest quantum; now and then one the kernel refuses (a full queue, a queue it
        # does not have, length 0, a time before the last).
        out, t = [], 0
        for _ in range(draw(st.integers(0, 40))):
            t += draw(st.sampled_from([0, 0, 0, 1, 2, 5, 40]))
            queue = draw(st.integers(0, c["queues"] - 1) | st.just(c["queues"] - 1))
            length = draw(st.integers(1, 4) | st.integers(1, top + 3) |
                          st.sampled_from([64, 1500, MAX_LENGTH]))
            out.append((t, queue, length))
        if out and draw(st.integers(0, 9)) == 0:
            k = draw(st.integers(0, len(out) - 1))
            time, queue, length = out[k]
            out[k] = draw(st.sampled_from([(time, c["queues"], length), (time, queue, 0),
                                           (max(0, time - 1), queue, length)]))
        return (out,)

    return {"run": traces()}


# -- the PIFO ----------------------------------------------------------------------------------

class _PifoModel:
    def __init__(self, params: Mapping[str, Any]):
        self.pifo = PifoModel(int(params["capacity"]))

    def reset(self) -> None:
        self.pifo.reset()

    def run(self, op: str, request: bytes) -> Response:
        data, error = pifo_answer(self.pifo, request)
        return Response(data, error)


def _op_record(k: int, op) -> bytes:
    if isinstance(op, str):
        op = (op,)
    if not isinstance(op, Sequence) or not op or op[0] not in ("push", "pop"):
        raise TypeError(f"operation {k} is ('push', rank, item) or ('pop',), not {op!r}")
    if op[0] == "pop":
        if len(op) != 1:
            raise TypeError(f"operation {k}: a pop takes nothing, not {op[1:]!r}")
        return pack_op(POP)
    if len(op) != 3:
        raise TypeError(f"operation {k}: a push is ('push', rank, item), not {op!r}")
    _, rank, item = op
    for field, value, high in (("rank", rank, MAX_RANK), ("item", item, MAX_ITEM)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
            raise ValueError(f"operation {k}: a {field} is an integer from 0 to {high}, not "
                             f"{value!r}")
    return pack_op(PUSH, rank, item)


def _encode_run(params, ops) -> list[bytes]:
    if isinstance(ops, (str, bytes)) or not isinstance(ops, Sequence):
        raise TypeError("pifo.run takes a list of operations, ('push', rank, item) or "
                        f"('pop',), not {type(ops).__name__}")
    return [b"".join(_op_record(k, op) for k, op in enumerate(ops))]


def _pops(data: bytes) -> list[tuple[int, int]]:
    whole = len(data) - len(data) % POPPED_BYTES
    return [unpack_popped(data[k:k + POPPED_BYTES]) for k in range(0, whole, POPPED_BYTES)
            if data[k + 3] != REFUSED]


def _pifo_error(params, response, *args) -> str:
    """What the kernel said it refused: its last record names the operation and why."""
    data = response.data
    if len(data) >= POPPED_BYTES and data[-5] == REFUSED:
        return refusal_text(data[-POPPED_BYTES:], int(params["capacity"]))
    return "the batch was refused"


_PIFO_OPS = (
    # A pop's record for an operation's; held from one frame into the next at most: the
    # operation being executed, the two places of the popped queue, the output register, and
    # a refusal record.
    Operation("run", _encode_run, lambda params, responses, ops: _pops(responses[0]),
              max_response=lambda params, n: n + POPPED_BYTES, error=_pifo_error,
              expansion=1.0, holdback=5 * POPPED_BYTES,
              doc="a batch of ('push', rank, item) and ('pop',): the pops' (rank, item)"),
    Operation("push", lambda params, rank, item: [_op_record(0, ("push", rank, item))],
              lambda params, responses, rank, item: None,
              max_response=lambda params, n: n + POPPED_BYTES, error=_pifo_error,
              doc="push(rank, item): hold item at rank"),
    Operation("pop", lambda params: [_op_record(0, ("pop",))],
              lambda params, responses: _pops(responses[0])[0],
              max_response=lambda params, n: n + POPPED_BYTES, error=_pifo_error,
              doc="pop() -> (rank, item) of the smallest rank, first pushed first"),
)


def _pifo_workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
    capacity = int(params["capacity"])
    ops, held = [], 0
    for _ in range(max(1, size // OP_BYTES)):
        if held and (held == capacity or rng.random() < 0.5):
            ops.append(("pop",))
            held -= 1
        else:
            ops.append(("push", rng.randrange(1 << 10), rng.randrange(1 << 32)))
            held += 1
    return "run", (ops,)


def _pifo_strategies(params) -> dict:
    from hypothesis import strategies as st

    capacity = int(params["capacity"])
    rank = st.integers(0, 7) | st.integers(0, MAX_RANK)  # equal ranks often
    item = st.integers(0, MAX_ITEM)
    push = st.tuples(st.just("push"), rank, item)
    op = st.one_of(push, push, st.just(("pop",)))
    return {
        "run": st.lists(op, max_size=2 * capacity + 4).map(lambda ops: (ops,)),
        "push": st.tuples(rank, item),
        "pop": st.just(()),
    }


def pifo_bench(params, op: str, args: tuple) -> dict:
    """Rates per operation, and ``heapq`` doing the same pushes and pops on this CPU (the
    reference the kernel's operations per second are set against)."""
    import heapq

    from ..bench import time_call

    (ops,) = args

    def run() -> None:
        heap: list = []
        n = 0
        for op_ in ops:
            if op_[0] == "push":
                heapq.heappush(heap, (op_[1], n, op_[2]))
                n += 1
            else:
                heapq.heappop(heap)

    seconds = time_call(run)
    rate = len(ops) / seconds
    return {"items": len(ops), "unit": "operations", "reference": ("heapq", rate),
            "rows": [("heapq push/pop on this CPU", rate, "operations/s",
                      f"the same {len(ops)} operations, (rank, order, item) tuples, best of 5")]}


SCHEDULER = KernelSpec(
    name="scheduler", id=6, version=1,
    summary="a packet scheduler (sp, rr, wrr, drr): a trace of arrivals to its departures",
    gateware="hdl.kernels.scheduler:scheduler",
    model=_SchedulerModel,
    operations=(Operation("run", _encode_trace, _decode_trace,
                          max_response=lambda params, n: n, error=_trace_error,
                          expansion=1.0,
                          holdback=lambda params: DEPARTURE_BYTES * (
                              int(params["queues"]) * int(params["depth"]) + 2),
                          doc="arrivals (time, queue, length) to departures (time, queue, "
                              "length, index)"),),
    params={"queues": Param(4, "queues, 1 to 16", low=1, high=MAX_QUEUES),
            "policy": Param("rr", "sp, rr, wrr or drr", convert=_policy),
            "weights": Param("1", "wrr: packets a queue sends a cycle of rounds (one for all, "
                             "or one a queue, 1 to 255)", convert=_numbers("weights", 1, 255)),
            "quanta": Param("1500", "drr: bytes a queue may send a turn (one for all, or one a "
                            "queue, 1 to 65535)", convert=_numbers("quanta", 1, MAX_LENGTH)),
            "depth": Param(8, "packets each queue holds (queues x depth <= 64)", low=1,
                           high=MAX_HELD),
            "width": Param(8, "bytes per beat", choices=(1, 2, 4, 8))},
    # The iCE40 UP5K: a byte a beat, as its link carries them, to leave room for other kernels.
    board_params={"icebreaker": {"width": 1}},
    proof_params={"queues": 2, "depth": 2},
    default=False,  # built for a use, with its policy
    workload=_scheduler_workload, strategies=_scheduler_strategies, bench=scheduler_bench,
)

PIFO = KernelSpec(
    name="pifo", id=7, version=1,
    summary="a PIFO queue: push(rank, item), pop() the smallest rank",
    gateware="hdl.kernels.pifo:pifo",
    model=_PifoModel,
    operations=_PIFO_OPS,
    params={"capacity": Param(16, "entries", low=1, high=1024),
            "width": Param(8, "bytes per beat", choices=(1, 2, 4, 8))},
    # The iCE40 UP5K: a byte a beat and 8 entries (about 200 logic cells an entry: 16 do not
    # fit beside the link; see README for each board's limit).
    board_params={"icebreaker": {"capacity": 8, "width": 1}},
    proof_params={"capacity": 4},
    stateful=True,
    default=False,
    workload=_pifo_workload, strategies=_pifo_strategies, bench=pifo_bench,
)
