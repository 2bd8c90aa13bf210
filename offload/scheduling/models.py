"""Queue arbitration's reference behaviour: the schedulers and the PIFO, as the gateware must
answer, cycle for cycle and packet for packet.

**The scheduler's server.** A trace of arrivals ``(time, queue, length)`` (times in cycles, not
decreasing; a packet's index is its place in the trace) goes through ``queues`` FIFO queues and
one server. Every cycle ``t``: first the arrivals of time ``t`` join their queues, in trace
order; then the scheduler takes one *step*. A step of strict priority, round robin and
weighted round robin always grants a packet while any queue holds one (work-conserving): the
head of the granted queue departs at ``t``, whatever its length (one grant a cycle, the pace
of a scheduler that hands a packet descriptor to a port each cycle). A step of deficit round
robin either grants a packet or, when the head queue's deficit is short of its head packet,
adds a quantum and moves that queue to the tail (a step without a departure, as the loop of
Linux ``sch_drr``'s dequeue would take). The result is every departure ``(time, queue, length,
index)`` in order.

Policies (:data:`POLICIES`):

* ``sp``, strict priority: the lowest-numbered queue that holds a packet.
* ``rr``, round robin: the first queue holding a packet after the last one granted (queue 0
  first), so a queue that holds packets waits at most ``queues - 1`` grants.
* ``wrr``, weighted round robin, interleaved: the grants go in rounds ``r = 1 .. max(w)``; in
  round ``r`` each queue ``i`` with ``w[i] >= r`` that holds a packet is granted once, in queue
  order. A round, or the rest of one, without such a queue is passed over in the same step.
* ``drr``, deficit round robin (Shreedhar and Varghese; Linux ``sch_drr``): a queue that
  receives a packet while empty joins the tail of the active list with a deficit of its
  quantum; at the head, a packet no longer than the deficit is sent and its length taken from
  the deficit (the queue stays at the head), else the quantum is added and the queue moves to
  the tail; a queue that empties leaves the list (its deficit goes with it).

**The PIFO** (:class:`PifoModel`): ``push(rank, item)``, and ``pop()`` of the smallest rank, the
first pushed among equal ranks; ``capacity`` entries at most.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["POLICIES", "Arrival", "Departure", "TraceError", "schedule", "PifoModel",
           "PifoError", "pifo_answer", "scheduler_answer", "check_policy", "serve",
           "refusal_text"]

POLICIES = ("sp", "rr", "wrr", "drr")


class TraceError(ValueError):
    """A trace the scheduler cannot take; says which arrival and why."""


class PifoError(ValueError):
    """A push to a full PIFO or a pop from an empty one."""


@dataclass(frozen=True)
class Arrival:
    time: int
    queue: int
    length: int


@dataclass(frozen=True)
class Departure:
    time: int
    queue: int
    length: int
    index: int


def _check(arrivals: Sequence, queues: int, capacity: int | None, first: int = 0,
           last: int = 0) -> list[Arrival]:
    out = []
    for index, a in enumerate(arrivals, first):
        a = a if isinstance(a, Arrival) else Arrival(*a)
        if a.time < last:
            raise TraceError(f"arrival {index}: time {a.time} is before the last, {last}")
        if not 0 <= a.queue < queues:
            raise TraceError(f"arrival {index}: queue {a.queue} is not one of the {queues}")
        if a.length < 1:
            raise TraceError(f"arrival {index}: a packet is at least 1 byte, not {a.length}")
        last = a.time
        out.append(a)
    return out


def schedule(arrivals: Iterable, queues: int, policy: str, *,
             weights: Sequence[int] | None = None, quanta: Sequence[int] | None = None,
             capacity: int | None = None) -> list[Departure]:
    """The departures of ``arrivals`` under ``policy`` (see the module doc).

    ``weights`` (``wrr``: 1 or more each) and ``quanta`` (``drr``: bytes, 1 or more each) have
    one value a queue. ``capacity``: packets a queue holds at most; an arrival to a full queue
    is a :class:`TraceError` (None: unbounded).
    """
    check_policy(queues, policy, weights, quanta)
    trace = _check(list(arrivals), queues, capacity)
    return list(serve(trace, False, queues, policy, weights, quanta, capacity))


def serve(trace: Sequence, cut: bool, queues: int, policy: str, weights, quanta, capacity):
    """The departures of ``trace``, yielded as they happen; a :class:`TraceError` where the
    kernel would refuse the trace, at the point where the gateware sees why: an arrival is
    checked when it is the next one to join (before the step of the cycle the last one joined
    in), a full queue when the arrival joins it, and a trace cut inside a record (``cut``) when
    every whole arrival has joined."""
    fifo: list[deque[int]] = [deque() for _ in range(queues)]  # packet indices
    held = 0
    step = _POLICY[policy](queues, weights, quanta, fifo, trace)
    k, t = 0, 0

    def look() -> None:  # the next arrival, as the gateware checks it
        if k < len(trace):
            _check([trace[k]], queues, None, first=k, last=t)
        elif cut:
            raise TraceError(f"arrival {k}: the trace ends inside it")

    look()
    while k < len(trace) or held:
        if not held and trace[k].time > t:
            t = trace[k].time  # idle until the next arrival
        while k < len(trace) and trace[k].time == t:
            a = trace[k]
            if capacity is not None and len(fifo[a.queue]) >= capacity:
                raise TraceError(f"arrival {k}: queue {a.queue} already holds {capacity} "
                                 f"packets at cycle {t}")
            was_empty = not fifo[a.queue]
            fifo[a.queue].append(k)
            step.arrived(a.queue, was_empty)
            held += 1
            k += 1
            look()
        granted = step.step() if held else None
        if granted is not None:
            index = fifo[granted].popleft()
            held -= 1
            yield Departure(t, granted, trace[index].length, index)
            step.departed(granted)
        t += 1


def scheduler_answer(request: bytes, queues: int, policy: str, *,
                     weights: Sequence[int] | None = None, quanta: Sequence[int] | None = None,
                     capacity: int | None = None) -> tuple[bytes, bool]:
    """The scheduler kernel's answer to one request (arrival records of
    :mod:`hdl.kernels.scheduling_format`), as the gateware gives it: the departure records,
    then ``error`` if the trace is refused (see :func:`serve`: the departures before the
    point where the refusal is seen are sent first)."""
    from hdl.kernels.scheduling_format import ARRIVAL_BYTES, pack_departure, unpack_arrival

    whole = len(request) - len(request) % ARRIVAL_BYTES
    trace = [Arrival(*unpack_arrival(request[k:k + ARRIVAL_BYTES]))
             for k in range(0, whole, ARRIVAL_BYTES)]
    out = bytearray()
    try:
        for d in serve(trace, whole != len(request), queues, policy, weights, quanta,
                        capacity):
            out += pack_departure(d.time, d.queue)
    except TraceError:
        return bytes(out), True
    return bytes(out), False


def check_policy(queues: int, policy: str, weights: Sequence[int] | None,
                 quanta: Sequence[int] | None) -> None:
    """``ValueError`` for a policy, or weights or quanta, that a scheduler cannot have."""
    if policy not in POLICIES:
        raise ValueError(f"a policy is one of {', '.join(POLICIES)}, not {policy!r}")
    if not 1 <= queues:
        raise ValueError(f"a scheduler has at least one queue, not {queues!r}")
    for name, values, needed in (("weights", weights, policy == "wrr"),
                                 ("quanta", quanta, policy == "drr")):
        if needed and (values is None or len(values) != queues or min(values) < 1):
            raise ValueError(f"{policy} needs {name}: {queues} values of 1 or more, not "
                             f"{values!r}")


class _Policy:
    def __init__(self, queues, weights, quanta, fifo, trace):
        self.n, self.weights, self.quanta, self.fifo, self.trace = (queues, weights, quanta,
                                                                    fifo, trace)

    def arrived(self, queue: int, was_empty: bool) -> None:
        pass

    def departed(self, queue: int) -> None:
        pass


class _StrictPriority(_Policy):
    def step(self):
        return next(q for q in range(self.n) if self.fifo[q])


class _RoundRobin(_Policy):
    last = -1

    def step(self):
        for offset in range(1, self.n + 1):
            q = (self.last + offset) % self.n
            if self.fifo[q]:
                self.last = q
                return q
        return None


class _WeightedRoundRobin(_Policy):
    round, next = 1, 0  # the round, and the first queue it may still grant

    def step(self):
        top = max(self.weights)
        r, start = self.round, self.next
        for _ in range(top + 1):  # the rest of this round, then whole rounds in turn
            for q in range(start, self.n):
                if self.weights[q] >= r and self.fifo[q]:
                    self.round, self.next = r, q + 1
                    return q
            r, start = r % top + 1, 0
        return None


class _DeficitRoundRobin(_Policy):
    def __init__(self, *args):
        super().__init__(*args)
        self.active: deque[int] = deque()
        self.deficit = [0] * self.n

    def arrived(self, queue, was_empty):
        if was_empty:
            self.active.append(queue)
            self.deficit[queue] = self.quanta[queue]

    def step(self):
        q = self.active[0]
        length = self.trace[self.fifo[q][0]].length
        if length <= self.deficit[q]:
            self.deficit[q] -= length
            return q
        self.deficit[q] += self.quanta[q]
        self.active.rotate(-1)  # to the tail
        return None

    def departed(self, queue):
        if not self.fifo[queue]:
            self.active.popleft()
            self.deficit[queue] = 0


_POLICY = {"sp": _StrictPriority, "rr": _RoundRobin, "wrr": _WeightedRoundRobin,
           "drr": _DeficitRoundRobin}


class PifoModel:
    """A push-in first-out queue of ``capacity`` entries (see the module doc)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a PIFO holds at least one entry, not {capacity!r}")
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        self._heap: list[tuple[int, int, int]] = []
        self._pushed = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, rank: int, item: int) -> None:
        if len(self._heap) >= self.capacity:
            raise PifoError(f"push of rank {rank}: the PIFO is full ({self.capacity} entries)")
        heapq.heappush(self._heap, (rank, self._pushed, item))
        self._pushed += 1

    def pop(self) -> tuple[int, int]:
        if not self._heap:
            raise PifoError("pop: the PIFO is empty")
        rank, _, item = heapq.heappop(self._heap)
        return rank, item


def pifo_answer(pifo: PifoModel, request: bytes) -> tuple[bytes, bool]:
    """The PIFO kernel's answer to one request (records of
    :mod:`hdl.kernels.scheduling_format`), as the gateware gives it: a record for each pop, up
    to the first operation it cannot take (a push to a full PIFO, a pop from an empty one, a
    kind that is neither, a record cut short), then a refusal record naming it and ``error``;
    the operations after that one have no effect. ``pifo`` is changed by the operations
    taken."""
    from hdl.kernels.scheduling_format import (
        BAD_KIND,
        CUT,
        EMPTY,
        FULL,
        OP_BYTES,
        POP,
        PUSH,
        pack_popped,
        pack_refusal,
        unpack_op,
    )

    out = bytearray()
    for k in range(0, len(request), OP_BYTES):
        number = k // OP_BYTES
        record = request[k:k + OP_BYTES]
        if len(record) < OP_BYTES:
            return bytes(out + pack_refusal(CUT, number)), True
        kind, rank, item = unpack_op(record)
        if kind == PUSH and len(pifo) < pifo.capacity:
            pifo.push(rank, item)
        elif kind == POP and len(pifo):
            out += pack_popped(*pifo.pop())
        else:
            why = FULL if kind == PUSH else EMPTY if kind == POP else BAD_KIND
            return bytes(out + pack_refusal(why, number)), True
    return bytes(out), False


def refusal_text(record: bytes, capacity: int) -> str:
    """The words for a PIFO's refusal record (see :mod:`hdl.kernels.scheduling_format`)."""
    from hdl.kernels.scheduling_format import BAD_KIND, CUT, EMPTY, FULL, unpack_refusal

    why, number = unpack_refusal(record)
    return {FULL: f"operation {number}: a push to a full PIFO ({capacity} entries)",
            EMPTY: f"operation {number}: a pop from an empty PIFO",
            BAD_KIND: f"operation {number}: a record that is neither a push nor a pop",
            CUT: f"operation {number}: the request ends inside its record"}.get(
                why, f"operation {number} was refused ({why})")
