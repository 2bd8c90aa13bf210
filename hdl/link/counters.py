"""A bank of 32-bit event counters whose totals live in block RAM.

A 32-bit counter in flip-flops costs 32 flip-flops and a 32-bit adder; a few dozen of them, and
the wide multiplexer that reads them out, fill a small FPGA. The bank keeps the totals in one
16-bit-wide memory, two entries a counter (its low half and its high half: one 256x16 block
RAM on an iCE40 for up to 128 counters), and only the low bits of each count in flip-flops. A
sweeper brings the totals up to date, one entry a cycle, in turn, and never stops: a read
waits for the sweeper to reach the counter asked for, and its result is the total the sweeper
writes then.

Each counter's low ``b`` bits (``b`` = :attr:`CounterBank.pending_bits`) count in flip-flops,
modulo ``2**b``, and are never cleared. The sweeper steps at counter ``a``'s low half in cycle
t and at its high half in cycle t + 1. At the low half, the RAM's read port holds the low half
as the step before at ``a`` wrote it (``2 * count`` cycles before), and the step writes back
the low bits counted now (those of every increment before cycle t), and the bits above them,
up to bit 15, plus one if the low bits are below the stored ones: the count has wrapped around
``2**b`` since. It has wrapped at most once, since a counter counts at most ``2 * count`` <
``2**b`` times between two steps at it. The carry out of bit 15 waits in a flip-flop for the
step at the high half, which writes back the high half plus that carry. The read port reads
the next entry meanwhile, never the one being written, so the block RAM's read port needs no
logic for collisions (see :mod:`hdl.link.ram`).

The low bits count in binary: a logic cell a bit, each with its own flip-flop and the carry
chain. (A shift register along a de Bruijn sequence costs only a flip-flop a bit up to four
bits, but five need two logic cells for the bit shifted in, and the step's decoder of the state
taken grows by more than that saves.)
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .ram import NO_RW_CHECK, read_port

__all__ = ["CounterBank"]


class CounterBank(wiring.Component):
    """``count`` event counters of 32 bits, totals in block RAM, read one at a time.

    The sweeper steps at one half of a counter every cycle (see the module documentation): at
    counter ``i``'s low half in the cycles ``2 * (k * count + i)`` after power-on, ``k`` = 0,
    1, ..., and at its high half in the cycle after each; the step of the first cycle writes
    nothing (the RAM's read port holds nothing yet). A read is taken in a cycle where ``rd_en``
    and ``rd_ready`` are both high; ``rd_ready`` is high in the cycles when the sweeper steps at
    ``rd_addr``'s low half and writes: a read waits at most ``2 * count`` cycles.

    Two cycles after a read is taken in cycle t (:attr:`LATENCY`), ``rd_valid`` is high for one
    cycle and ``rd_data`` is the counter's total including every increment up to cycle t - 1's
    and none after (modulo 2**32). ``rd_data`` holds that value until the cycle after the next
    read is taken (its low half is loaded a cycle before its high half).

    Totals start at zero. The bank has no reset but ``rd_valid``'s: a domain reset changes no
    count. (On an iCE40, block RAM reads as zeros for a few microseconds after configuration,
    while the platform holds the domain in reset; the bank counts right through that as long
    as nothing counts then, as nothing does while its reader is held in reset.)

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
        The bank takes a read in this cycle: the sweeper is at ``rd_addr``'s low half (a few
        gates over ``rd_addr`` and the bank's flip-flops).
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
        #: Bits of each count kept in flip-flops: enough for ``2 * count`` increments between
        #: steps.
        self.pending_bits = bits = (2 * count).bit_length()
        #: The counts' low bits, in binary (for tests to watch).
        self.pending = [Signal(bits, name=f"pending{i}", reset_less=True) for i in range(count)]
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
        b = self.pending_bits

        # Entry 2 * i + 1 holds bits 16 to 31 of counter i's total, entry 2 * i its bits 0 to 15.
        m.submodules.totals = totals = Memory(shape=16, depth=2 * n, init=[], attrs=NO_RW_CHECK)
        wr = totals.write_port()
        rd = read_port(m, totals, "rd")

        for i, reg in enumerate(self.pending):
            with m.If(self.inc[i]):
                m.d.sync += reg.eq(reg + 1)

        ptr = Signal(range(n), reset_less=True)  # the counter stepped in this cycle
        high = Signal(reset_less=True)  # and its half: the high one
        ptr_next = Signal(range(n))
        writes = Signal(reset_less=True)  # low in the first cycle after power-on
        m.d.comb += ptr_next.eq(Mux(ptr == n - 1, 0, ptr + 1))
        m.d.sync += [high.eq(~high), writes.eq(1)]
        with m.If(high):
            m.d.sync += ptr.eq(ptr_next)

        low = Signal(b)  # the low bits counted, in binary
        m.d.comb += low.eq(Array(self.pending)[ptr])
        old = rd.data
        carry = Signal(reset_less=True)  # out of the low half written in the cycle before
        sum_low = Signal(b + 1)
        sum_high = Signal(17 - b)
        half = Signal(16)
        m.d.comb += [
            sum_low.eq(old[:b] + (high & carry)),
            sum_high.eq(old[b:] + Mux(high, sum_low[b], low < old[:b])),
            half.eq(Cat(Mux(high, sum_low[:b], low), sum_high[:16 - b])),
            rd.addr.eq(Cat(~high, Mux(high, ptr_next, ptr))),
            wr.en.eq(writes),
            wr.addr.eq(Cat(high, ptr)),
            wr.data.eq(half),
            self.rd_ready.eq(writes & ~high & (ptr == self.rd_addr)),
        ]
        m.d.sync += carry.eq(writes & sum_high[16 - b])

        take = self.rd_en & self.rd_ready
        taken = Signal()  # a read was taken in the cycle before: its high half is written now
        m.d.sync += [taken.eq(take), self.rd_valid.eq(taken)]
        data = Signal(32, reset_less=True)
        m.d.comb += self.rd_data.eq(data)
        with m.If(take):
            m.d.sync += data[:16].eq(half)
        with m.If(taken):
            m.d.sync += data[16:].eq(half)

        return m
