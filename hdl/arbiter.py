"""A round-robin arbiter (Amaranth 0.5 has none: ``lib.scheduler`` was removed, RFC 19).

:class:`RoundRobin` grants, among the ``requests`` raised, the first one after the last granted
(in index order, wrapping), so a request that stays raised is granted within ``n`` grants
(``tests/scheduling/test_formal.py`` proves it). :func:`first_set` is the priority encoder both
it and strict priority use.
"""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RoundRobin", "first_set"]


def first_set(m: Module, bits, name: str = "first") -> tuple[Signal, Signal]:
    """The index of the lowest bit set in ``bits``, and whether any is (comb)."""
    n = len(bits)
    index = Signal(range(max(n, 2)), name=name)
    for k in reversed(range(n)):
        with m.If(bits[k]):
            m.d.comb += index.eq(k)
    return index, bits.any()


class RoundRobin(wiring.Component):
    """Round-robin arbitration among ``n`` requesters.

    Members
    -------
    requests : ``In(n)``
        Bit ``i`` raised: requester ``i`` asks for a grant.
    grant : ``Out(range(n))``
        The requester granted this cycle: the first raised after the last one granted (the
        first one after ``n - 1``, that is from 0, after a reset). Combinational.
    valid : ``Out(1)``
        Whether any request is raised (``grant`` is meaningful).
    advance : ``In(1)``
        Take the grant: the last one granted becomes ``grant`` at the clock edge. Left low, the
        arbiter keeps its place (the grant was not used).
    """

    def __init__(self, n: int):
        if not 1 <= n:
            raise ValueError(f"An arbiter has at least one requester, not {n!r}")
        self.n = n
        super().__init__({"requests": In(n), "grant": Out(range(max(n, 2))),
                          "valid": Out(1), "advance": In(1)})
        self.last = Signal(range(max(n, 2)), init=n - 1)

    def elaborate(self, platform):
        m = Module()
        n, last = self.n, self.last
        # Requests after the last one granted, then all of them: the first of the first group
        # that has one is the grant.
        after = Signal(n)
        for k in range(n):
            m.d.comb += after[k].eq(self.requests[k] & (last < k) if k else Const(0))
        first_after, any_after = first_set(m, after, "first_after")
        first_any, any_ = first_set(m, self.requests, "first_any")
        m.d.comb += [self.grant.eq(Mux(any_after, first_after, first_any)),
                     self.valid.eq(any_)]
        with m.If(self.advance & any_):
            m.d.sync += last.eq(self.grant)
        return m
