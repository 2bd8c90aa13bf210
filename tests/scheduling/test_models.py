"""The schedulers' and the PIFO's CPU models against what each policy promises, checked from
the outside (the backlog every departure saw, rebuilt from the trace), against an independent
transcription of Linux ``sch_drr``'s dequeue loop, and the PIFO against ``sortedcontainers``."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from offload.scheduling import PifoError, PifoModel, TraceError, schedule

QUEUES = 4


@st.composite
def traces(draw, queues: int = QUEUES, max_length: int = 40):
    """Bursty arrivals, idle gaps, queues left idle, lengths 1 to ``max_length``."""
    count = draw(st.integers(1, 60))
    used = draw(st.lists(st.integers(0, queues - 1), min_size=1, max_size=queues, unique=True))
    t, out = 0, []
    for _ in range(count):
        t += draw(st.sampled_from([0, 0, 0, 1, 2, 7]))
        out.append((t, draw(st.sampled_from(used)), draw(st.integers(1, max_length))))
    return out


def check_server(trace, departures, queues):
    """What every policy owes: each packet leaves once, after it came, in its queue's order, one
    a cycle at most; and whenever a packet was held, a step was taken (work-conserving)."""
    assert sorted(d.index for d in departures) == list(range(len(trace)))
    times = [d.time for d in departures]
    assert times == sorted(times) and len(set(times)) == len(times)
    for d in departures:
        t, q, length = trace[d.index]
        assert d.time >= t and d.queue == q and d.length == length
    for q in range(queues):
        order = [d.index for d in departures if d.queue == q]
        assert order == sorted(order)


def backlog(trace, departures, t) -> list[int]:
    """Packets each queue held when the step of cycle ``t`` was taken."""
    held = [0] * QUEUES
    for time, q, _ in trace:
        held[q] += time <= t
    for d in departures:
        held[d.queue] -= d.time < t
    return held


@settings(max_examples=150, deadline=None)
@given(traces())
def test_strict_priority_serves_the_lowest_queue_held(trace):
    out = schedule(trace, QUEUES, "sp")
    check_server(trace, out, QUEUES)
    for d in out:
        held = backlog(trace, out, d.time)
        assert d.queue == min(q for q in range(QUEUES) if held[q])
    # Work-conserving: no cycle passes without a departure while a packet is held.
    done = {d.time for d in out}
    for t in range(out[-1].time + 1):
        assert (t in done) == any(backlog(trace, out, t))


@settings(max_examples=150, deadline=None)
@given(traces())
def test_round_robin_grants_the_next_queue_held_after_the_last(trace):
    out = schedule(trace, QUEUES, "rr")
    check_server(trace, out, QUEUES)
    last = QUEUES - 1
    for d in out:
        held = backlog(trace, out, d.time)
        assert d.queue == next(q % QUEUES for q in range(last + 1, last + 1 + QUEUES)
                               if held[q % QUEUES])
        last = d.queue


def test_round_robin_grants_every_backlogged_queue_once_in_n():
    trace = [(0, q, 1) for _ in range(5) for q in (2, 0, 3, 1)]
    assert [d.queue for d in schedule(trace, QUEUES, "rr")] == [0, 1, 2, 3] * 5


def test_weighted_round_robin_interleaves_by_weight():
    weights = [3, 1, 2, 1]
    trace = [(0, q, 1) for q in range(QUEUES) for _ in range(12)]
    order = [d.queue for d in schedule(trace, QUEUES, "wrr", weights=weights)]
    # Round 1: every queue; round 2: weights of 2 or more; round 3: of 3.
    assert order[:7] == [0, 1, 2, 3, 0, 2, 0]
    assert order[7:14] == order[:7]


@settings(max_examples=150, deadline=None)
@given(traces(), st.lists(st.integers(1, 4), min_size=QUEUES, max_size=QUEUES))
def test_weighted_round_robin_grants_by_rounds(trace, weights):
    out = schedule(trace, QUEUES, "wrr", weights=weights)
    check_server(trace, out, QUEUES)
    # An independent walk of the rounds: from (round, next queue), the first queue eligible
    # in that round and holding a packet, passing over rounds without one.
    top = max(weights)
    r, nxt = 1, 0
    for d in out:
        held = backlog(trace, out, d.time)
        found = None
        rr, start = r, nxt
        for _ in range(top + 1):
            found = next((q for q in range(start, QUEUES) if weights[q] >= rr and held[q]),
                         None)
            if found is not None:
                break
            rr, start = rr % top + 1, 0
        assert d.queue == found
        r, nxt = rr, found + 1


def linux_drr(trace, quanta):
    """Linux ``sch_drr``'s enqueue and dequeue, transcribed: every packet enqueued first (all
    arrive at time 0), then dequeue called until the qdisc is empty. The order of the packets."""
    queues = [deque() for _ in quanta]
    active: list[int] = []
    deficit = [0] * len(quanta)
    for index, (_, q, length) in enumerate(trace):
        if not queues[q]:
            active.append(q)  # list_add_tail(&cl->alist, &q->active)
            deficit[q] = quanta[q]
        queues[q].append((index, length))
    order = []
    while active:
        cl = active[0]
        index, length = queues[cl][0]
        if length <= deficit[cl]:
            deficit[cl] -= length
            queues[cl].popleft()
            if not queues[cl]:
                active.pop(0)  # list_del(&cl->alist)
            order.append(index)
            continue
        deficit[cl] += quanta[cl]
        active.append(active.pop(0))  # list_move_tail
    return order


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.just(0), st.integers(0, QUEUES - 1), st.integers(1, 100)),
                min_size=1, max_size=60),
       st.lists(st.integers(1, 64), min_size=QUEUES, max_size=QUEUES))
def test_deficit_round_robin_is_linux_sch_drr(trace, quanta):
    out = schedule(trace, QUEUES, "drr", quanta=quanta)
    check_server(trace, out, QUEUES)
    assert [d.index for d in out] == linux_drr(trace, quanta)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 90), min_size=QUEUES * 8, max_size=QUEUES * 8),
       st.integers(1, 64))
def test_deficit_round_robin_is_fair_in_bytes(lengths, quantum):
    """Shreedhar and Varghese's bound: while two queues with quantum Q stay backlogged, the
    bytes they have been sent differ by at most the longest packet plus 2Q."""
    trace = [(0, k % QUEUES, length) for k, length in enumerate(lengths)]
    out = schedule(trace, QUEUES, "drr", quanta=[quantum] * QUEUES)
    check_server(trace, out, QUEUES)
    left = [lengths[q::QUEUES].__len__() for q in range(QUEUES)]
    sent = [0] * QUEUES
    bound = max(lengths) + 2 * quantum
    for d in out:
        sent[d.queue] += d.length
        left[d.queue] -= 1
        if min(left) == 0:
            break  # a queue is no longer backlogged
        assert max(sent) - min(sent) <= bound


def test_bad_traces_name_the_arrival():
    with pytest.raises(TraceError, match="arrival 1: time 3 is before the last, 5"):
        schedule([(5, 0, 1), (3, 0, 1)], QUEUES, "rr")
    with pytest.raises(TraceError, match="arrival 0: queue 4 is not one of the 4"):
        schedule([(0, 4, 1)], QUEUES, "sp")
    with pytest.raises(TraceError, match="at least 1 byte"):
        schedule([(0, 0, 0)], QUEUES, "sp")
    with pytest.raises(TraceError, match="arrival 2: queue 1 already holds 2 packets"):
        schedule([(0, 1, 1)] * 3, QUEUES, "sp", capacity=2)
    with pytest.raises(ValueError, match="wrr needs weights"):
        schedule([(0, 0, 1)], QUEUES, "wrr")
    with pytest.raises(ValueError, match="a policy is one of"):
        schedule([(0, 0, 1)], QUEUES, "fifo")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("push"), st.integers(0, 7), st.integers(0, 999)),
                          st.just(("pop",))), max_size=80),
       st.integers(1, 16))
def test_pifo_is_a_sorted_list(ops, capacity):
    """Against ``sortedcontainers.SortedList`` keyed by (rank, order pushed)."""
    pifo, reference, pushed = PifoModel(capacity), SortedList(), 0
    for op in ops:
        if op[0] == "push":
            if len(reference) == capacity:
                with pytest.raises(PifoError, match="full"):
                    pifo.push(op[1], op[2])
                continue
            pifo.push(op[1], op[2])
            reference.add((op[1], pushed, op[2]))
            pushed += 1
        elif not reference:
            with pytest.raises(PifoError, match="empty"):
                pifo.pop()
        else:
            rank, _, item = reference.pop(0)
            assert pifo.pop() == (rank, item)
        assert len(pifo) == len(reference)
