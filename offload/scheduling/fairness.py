"""How fair a schedule is: the figures the bench shows for each policy on the same traces.

* :func:`jain`: Jain's fairness index of the queues' service, each divided by its share
  (1 when every queue got exactly its share, ``1/n`` when one queue got everything).
* :func:`gps_lag`: the largest lag, in bytes, of any queue behind an ideal fluid server
  (generalised processor sharing) doing the same work: every cycle the bytes the scheduler
  sent are shared among the queues backlogged in that cycle in proportion to their shares, and
  a queue's lag is what that fluid share gave it less what it was sent, over each of its
  backlogged periods (it starts again at 0 when the queue empties). Deficit round robin keeps
  it within a quantum and a packet (Shreedhar and Varghese); strict priority does not keep it
  at all.
* :func:`grants_per_cycle`: departures per cycle over the cycles some packet was held.

A queue's *share* is its weight (``wrr``), its quantum (``drr``), and 1 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from .models import Arrival, Departure

__all__ = ["jain", "gps_lag", "grants_per_cycle", "busy_cycles", "shares",
           "backlogged_service"]


def shares(policy: str, queues: int, weights: Sequence[int] | None = None,
           quanta: Sequence[int] | None = None) -> list[float]:
    if policy == "wrr":
        return [float(w) for w in weights]
    if policy == "drr":
        return [float(q) for q in quanta]
    return [1.0] * queues


def jain(values: Sequence[float]) -> float:
    """Jain's index ``(sum x)^2 / (n * sum x^2)`` of ``values`` (1.0 for none, or all 0)."""
    total = sum(values)
    square = sum(v * v for v in values)
    return 1.0 if not values or square == 0 else total * total / (len(values) * square)


def backlogged_service(arrivals: Sequence[Arrival], departures: Sequence[Departure],
                       queues: int) -> list[int]:
    """Bytes sent from each queue while every queue was backlogged (held a packet at the
    start of the cycle's step): the span where a fair share is well defined for all."""
    held = [0] * queues
    out = [0] * queues
    events = _events(arrivals, departures)
    for t in sorted(events):
        joined, left = events[t]
        for q in joined:
            held[q] += 1
        if all(held):
            for d in left:
                out[d.queue] += d.length
        for d in left:
            held[d.queue] -= 1
    return out


def _events(arrivals, departures) -> dict[int, tuple[list[int], list[Departure]]]:
    events: dict[int, tuple[list[int], list[Departure]]] = {}
    for a in arrivals:
        a = a if isinstance(a, Arrival) else Arrival(*a)
        events.setdefault(a.time, ([], []))[0].append(a.queue)
    for d in departures:
        events.setdefault(d.time, ([], []))[1].append(d)
    return events


def gps_lag(arrivals: Sequence[Arrival], departures: Sequence[Departure], queues: int,
            weights: Sequence[float]) -> float:
    """The largest lag, in bytes, of any queue behind the fluid share of the same work (see
    the module doc)."""
    held = [0] * queues
    fluid = [0.0] * queues  # the fluid share of this backlogged period so far
    sent = [0] * queues     # and what was sent in it
    worst = 0.0
    events = _events(arrivals, departures)
    for t in sorted(events):
        joined, left = events[t]
        for q in joined:
            held[q] += 1
        backlogged = [q for q in range(queues) if held[q]]
        work = sum(d.length for d in left)
        if backlogged and work:
            total = sum(weights[q] for q in backlogged)
            for q in backlogged:
                fluid[q] += work * weights[q] / total
        for d in left:
            sent[d.queue] += d.length
            held[d.queue] -= 1
        for q in backlogged:
            worst = max(worst, fluid[q] - sent[q])
            if not held[q]:
                fluid[q], sent[q] = 0.0, 0
    return worst


def grants_per_cycle(arrivals: Sequence[Arrival], departures: Sequence[Departure]) -> float:
    """Departures per cycle in which some packet was held (each cycle of a busy server)."""
    busy = busy_cycles(arrivals, departures)
    return len(departures) / busy if busy else 0.0


def busy_cycles(arrivals: Sequence[Arrival], departures: Sequence[Departure]) -> int:
    """Cycles in which some packet was held: the scheduler's steps (decisions)."""
    busy = 0
    held = 0
    events = _events(arrivals, departures)
    times = sorted(events)
    for k, t in enumerate(times):
        joined, left = events[t]
        held += len(joined)
        if held:
            busy += 1
        held -= len(left)
        if held and k + 1 < len(times):
            busy += times[k + 1] - t - 1  # the cycles up to the next event, still busy
    return busy
