"""A bank of 32-bit event counters whose totals live in block RAM.

A 32-bit counter in flip-flops costs 32 flip-flops and a 32-bit adder; a few dozen of them, and
the wide multiplexer that reads them out, fill a small FPGA. The bank keeps the totals in one
memory (32 bits by ``count``: two 16-bit-wide block RAMs on an iCE40) and only a small
*pending* counter per event in flip-flops. A sweeper adds the pending counts into the totals,
one counter per cycle, and a read is the same step aimed at the counter asked for.

A step at counter ``a`` in cycle t reads ``total[a]`` from the RAM and, in the same cycle, takes
``pending[a]`` plus ``a``'s increment of cycle t and zeroes ``pending[a]``; in cycle t + 1 it
writes the total plus what it took back to ``total[a]``.

A step in cycle t + 1 at the same counter would read ``total[a]`` in the cycle it is written.
With two counters or more, no RAM read ever does: the write of the first step is left out, and
the second adds what the first took to what it takes itself (it reads the total the first
read). A read never follows a read and the sweeper never steps one counter twice in a row, so
at most three steps in a row (a read, the sweeper, a read) are at one counter, and the block
RAM's read port needs no logic for collisions (see :mod:`hdl.link.ram`). With one counter, every
step is at it: its read port is transparent for the write port instead.
"""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .ram import NO_RW_CHECK, read_port

__all__ = ["CounterBank"]


class CounterBank(wiring.Component):
    """``count`` event counters of 32 bits, totals in block RAM, read one at a time.

    Every cycle is one step (see the module documentation): the sweeper's, at the counter after
    the one it stepped last, unless a read takes the cycle. A read is taken in a cycle where
    ``rd_en`` and ``rd_ready`` are both high. ``rd_ready`` is low in the cycle after a read is
    taken (and only then): the sweeper has at least every other cycle.

    Two cycles after a read of counter ``rd_addr`` is taken in cycle t, ``rd_valid`` is high for
    one cycle and ``rd_data`` is the counter's total including every increment up to and
    including cycle t's (modulo 2**32). ``rd_data`` holds that value until the next read's
    result replaces it.

    Pending counters have :attr:`pending_bits` bits, enough for ``2 * count``: the sweeper
    steps in at least one of any two consecutive cycles, so it visits each counter at least once
    every ``2 * count`` cycles (the first time within ``2 * count`` cycles of reset), and a step
    never takes more than the increments of those cycles. A pending counter cannot overflow
    however fast reads come.

    Totals start at zero (the RAM's initial contents). A domain reset clears the pending
    counters and loses what they held (at most ``2 * count`` increments a counter), but leaves
    the totals as they are.

    Parameters
    ----------
    count : int
        Number of counters, at least 1.

    Members
    -------
    inc : ``In(count)``
        Bit ``i`` high adds one to counter ``i`` in this cycle.
    rd_addr : ``In(range(count))``
        The counter a read asks for (below ``count``).
    rd_en : ``In(1)``
        Asks for a read of ``rd_addr``.
    rd_ready : ``Out(1)``
        The bank takes a read in this cycle; it comes straight from a flip-flop.
    rd_data : ``Out(32)``
        The total of the counter read, from a flip-flop.
    rd_valid : ``Out(1)``
        ``rd_data`` has just been loaded with a read's result.
    """

    #: Cycles from a read being taken to ``rd_valid``.
    LATENCY = 2

    def __init__(self, count: int):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"CounterBank count must be a positive integer, not {count!r}")
        self.count = count
        #: Bits of each pending counter: it never holds more than ``2 * count``.
        self.pending_bits = (2 * count).bit_length()
        #: The pending counters (for tests to watch; the bank drives them).
        self.pending = [Signal(self.pending_bits, name=f"pending{i}") for i in range(count)]
        super().__init__({
            "inc": In(count),
            "rd_addr": In(range(count)),
            "rd_en": In(1),
            "rd_ready": Out(1),
            "rd_data": Out(32),
            "rd_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.count
        pending = self.pending

        if n == 1:
            m.submodules.totals = totals = Memory(shape=32, depth=n, init=[])
            wr = totals.write_port()
            rd = totals.read_port(transparent_for=(wr,))
        else:
            m.submodules.totals = totals = Memory(shape=32, depth=n, init=[],
                                                  attrs=NO_RW_CHECK)
            wr = totals.write_port()
            rd = read_port(m, totals, "rd")

        # First cycle of a step: read the total, take and zero the pending count.
        ptr = Signal(range(n))  # the sweeper's next counter
        free = Signal(init=1)  # no read took the previous cycle
        take = Signal()
        addr = Signal(range(n))
        took = Signal(self.pending_bits)
        m.d.comb += [
            self.rd_ready.eq(free),
            take.eq(self.rd_en & free),
            addr.eq(Mux(take, self.rd_addr, ptr)),
            rd.addr.eq(addr),
            took.eq(Array(pending)[addr] + Array(self.inc)[addr]),
        ]
        m.d.sync += free.eq(~take)
        with m.If(~take):
            m.d.sync += ptr.eq(Mux(ptr == n - 1, 0, ptr + 1))
        for i in range(n):
            with m.If(addr == i):
                m.d.sync += pending[i].eq(0)
            with m.Elif(self.inc[i]):
                m.d.sync += pending[i].eq(pending[i] + 1)

        # Second cycle: write the total back, and give it to the reader if a read asked.
        w_valid = Signal()  # low in the first cycle after reset: no step before it
        w_addr = Signal(range(n))
        w_took = Signal(self.pending_bits + 2)  # what it took, and the steps before it left
        w_read = Signal()
        m.d.sync += [w_valid.eq(1), w_addr.eq(addr), w_read.eq(take)]
        chain = Signal()  # the step now is at the counter written back now: the write is left
        if n > 1:
            m.d.comb += chain.eq(w_valid & (w_addr == addr))
        m.d.sync += w_took.eq(took + Mux(chain, w_took, 0))
        total = Signal(32)
        m.d.comb += [
            total.eq(rd.data + w_took),
            wr.en.eq(w_valid & ~chain),
            wr.addr.eq(w_addr),
            wr.data.eq(total),
        ]
        m.d.sync += self.rd_valid.eq(w_read)
        with m.If(w_read):
            m.d.sync += self.rd_data.eq(total)

        return m
