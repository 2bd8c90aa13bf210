"""A bank of 32-bit event counters whose totals live in block RAM.

A 32-bit counter in flip-flops costs 32 flip-flops and a 32-bit adder; a few dozen of them, and
the wide multiplexer that reads them out, fill a small FPGA. The bank keeps the totals in one
memory (32 bits by ``count``: two 16-bit-wide block RAMs on an iCE40) and only the low bits of
each count in flip-flops. A sweeper brings the totals up to date, one counter a cycle, in turn,
and never stops: a read waits for the sweeper to reach the counter asked for, and its result
is the total the sweeper writes then.

Each counter's low ``b`` bits (``b`` = :attr:`CounterBank.pending_bits`) count in flip-flops,
modulo ``2**b``, and are never cleared. The sweeper's step at counter ``a`` in cycle t: the
RAM's read port holds ``total[a]`` as the step before at ``a`` wrote it (``count`` cycles
before), and the step writes back the low bits counted now (those of every increment before
cycle t), and the bits above them plus one if the low bits are below the total's: the
count has wrapped around ``2**b`` since. It has wrapped at most once, since a counter counts at
most ``count`` < ``2**b`` times in the ``count`` cycles between two steps. The read port reads
the next counter meanwhile. With two counters or more, that is never the counter being
written, so the block RAM's read port needs no logic for collisions (see :mod:`hdl.link.ram`);
with one, every step is at it, and its read port is transparent for the write port instead.

The low bits do not count in binary but along a de Bruijn sequence: a shift register whose
new bit is a function of its ``b`` bits (one logic cell for ``b`` up to 4) goes through all
``2**b`` states, where a binary counter needs a logic cell a bit. The step decodes the one
state it takes, behind the multiplexer that picks it.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .ram import NO_RW_CHECK, read_port

__all__ = ["CounterBank"]


def _de_bruijn(bits: int) -> list[int]:
    """A binary de Bruijn sequence of order ``bits`` (every ``bits``-bit word appears once in
    it, read cyclically), starting with ``bits`` zeros: the least one in lexicographic order."""
    a = [0] * (bits + 1)
    sequence = []

    def extend(t, p):
        if t > bits:
            if bits % p == 0:
                sequence.extend(a[1:p + 1])
        else:
            a[t] = a[t - p]
            extend(t + 1, p)
            if a[t - p] == 0:
                a[t] = 1
                extend(t + 1, t)
    extend(1, 1)
    return sequence


class CounterBank(wiring.Component):
    """``count`` event counters of 32 bits, totals in block RAM, read one at a time.

    The sweeper steps at one counter every cycle (see the module documentation): at counter
    ``i`` in the cycles ``k * count + i`` after power-on, ``k`` = 0, 1, ...; the step of the
    first cycle writes nothing (the RAM's read port holds nothing yet). A read is taken in a
    cycle where ``rd_en`` and ``rd_ready`` are both high; ``rd_ready`` is high in the cycles
    when the sweeper steps at ``rd_addr`` and writes: a read waits at most ``count`` cycles.

    In the cycle after a read is taken in cycle t, ``rd_valid`` is high for one cycle and
    ``rd_data`` is the counter's total including every increment up to cycle t - 1's and none
    after (modulo 2**32). ``rd_data`` holds that value until the next read's result replaces
    it.

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
        The bank takes a read in this cycle: the sweeper is at ``rd_addr`` (a few gates over
        ``rd_addr`` and the bank's flip-flops).
    rd_data : ``Out(32)``
        The total of the counter read, from a flip-flop.
    rd_valid : ``Out(1)``
        ``rd_data`` has just been loaded with a read's result.
    """

    #: Cycles from a read being taken to ``rd_valid``.
    LATENCY = 1

    def __init__(self, count: int):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"CounterBank count must be a positive integer, not {count!r}")
        self.count = count
        #: Bits of each count kept in flip-flops: enough for ``count`` increments between steps.
        self.pending_bits = bits = count.bit_length()
        sequence = _de_bruijn(bits)
        size = 1 << bits
        #: The state of the flip-flops after ``k`` increments from 0, for ``k`` below
        #: ``2**pending_bits`` (bit 0 is the bit shifted in last).
        self.pending_states = tuple(
            sum(sequence[(k + bits - 1 - i) % size] << i for i in range(bits))
            for k in range(size))
        assert sorted(self.pending_states) == list(range(size))
        self._shift_in = {state: sequence[(k + bits) % size]
                          for k, state in enumerate(self.pending_states)}
        #: The counts' low bits (for tests to watch, through :meth:`pending_count`).
        self.pending = [Signal(bits, name=f"pending{i}", reset_less=True) for i in range(count)]
        super().__init__({
            "inc": In(count),
            "rd_addr": In(range(count)),
            "rd_en": In(1),
            "rd_ready": Out(1),
            "rd_data": Out(32),
            "rd_valid": Out(1),
        })

    def pending_count(self, state: int) -> int:
        """The count modulo ``2**pending_bits`` that a register of :attr:`pending` in ``state``
        holds."""
        return self.pending_states.index(state)

    def _shift_in_bit(self, reg):
        # The bit shifted in, as its algebraic normal form (an XOR of ANDs of the register's
        # bits): written as a table, Yosys finds states where the bit shifted in equals bit 0
        # and gives bit 0's flip-flop an enable of its own, a logic cell more.
        bits = self.pending_bits
        anf = [self._shift_in[state] for state in range(1 << bits)]
        for i in range(bits):
            for state in range(1 << bits):
                if state >> i & 1:
                    anf[state] ^= anf[state ^ (1 << i)]
        bit = Const(0, 1)
        for monomial in range(1 << bits):
            if anf[monomial]:
                term = Const(1, 1)
                for i in range(bits):
                    if monomial >> i & 1:
                        term = term & reg[i]
                bit = bit ^ term
        return bit

    def elaborate(self, platform):
        m = Module()
        n = self.count
        b = self.pending_bits

        if n == 1:
            m.submodules.totals = totals = Memory(shape=32, depth=n, init=[])
            wr = totals.write_port()
            rd = totals.read_port(transparent_for=(wr,))
        else:
            m.submodules.totals = totals = Memory(shape=32, depth=n, init=[],
                                                  attrs=NO_RW_CHECK)
            wr = totals.write_port()
            rd = read_port(m, totals, "rd")

        for i, reg in enumerate(self.pending):
            with m.If(self.inc[i]):
                m.d.sync += reg.eq(Cat(self._shift_in_bit(reg), reg[:-1]))

        ptr = Signal(range(n), reset_less=True)  # the counter stepped in this cycle
        nxt = Signal(range(n))
        writes = Signal(reset_less=True)  # low in the first cycle after power-on
        m.d.comb += nxt.eq(Mux(ptr == n - 1, 0, ptr + 1))
        m.d.sync += [ptr.eq(nxt), writes.eq(1)]

        low = Signal(b)  # the low bits counted, in binary
        with m.Switch(Array(self.pending)[ptr]):
            for k, state in enumerate(self.pending_states):
                with m.Case(state):
                    m.d.comb += low.eq(k)
        old = rd.data
        total = Signal(32)
        m.d.comb += [
            total.eq(Cat(low, old[b:] + (low < old[:b]))),
            rd.addr.eq(nxt),
            wr.en.eq(writes),
            wr.addr.eq(ptr),
            wr.data.eq(total),
            self.rd_ready.eq(writes & (ptr == self.rd_addr)),
        ]

        take = self.rd_en & self.rd_ready
        m.d.sync += self.rd_valid.eq(take)
        data = Signal(32, reset_less=True)
        m.d.comb += self.rd_data.eq(data)
        with m.If(take):
            m.d.sync += data.eq(total)

        return m
