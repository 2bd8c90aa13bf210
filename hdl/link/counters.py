"""A bank of 32-bit event counters whose totals live in block RAM.

A 32-bit counter in flip-flops costs 32 flip-flops and a 32-bit adder; a few dozen of them, and
the wide multiplexer that reads them out, fill a small FPGA. The bank keeps the totals in one
memory (32 bits by ``count``: two 16-bit-wide block RAMs on an iCE40) and only a small
*pending* count per event in flip-flops. A sweeper adds the pending counts into the totals,
one counter a cycle, in turn, and never stops: a read waits for the sweeper to reach the
counter asked for, and its result is the total the sweeper writes then.

The sweeper's step at counter ``a`` in cycle t: the RAM's read port holds ``total[a]`` (read
in cycle t - 1), the step takes ``pending[a]`` (the increments since its last step at ``a``,
those of cycle t excluded), writes ``total[a]`` plus what it took back in the same cycle, and
sets ``pending[a]`` to ``a``'s increment of cycle t. The read port reads the next counter
meanwhile. With two counters or more, that is never the counter being written, so the block
RAM's read port needs no logic for collisions (see :mod:`hdl.link.ram`); with one, every step
is at it, and its read port is transparent for the write port instead.

Each counter is stepped every ``count`` cycles, so a pending count never exceeds ``count``. It
is not kept in binary but as the state of a shift register with feedback (a linear-feedback
shift register whose sequence, from 0, has more than ``count`` states): an increment is a shift,
one logic cell for the feedback bit, where a binary counter needs a carry into every bit. The
step decodes the one pending count it takes, behind the multiplexer that picks it.
"""

from itertools import combinations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .ram import NO_RW_CHECK, read_port

__all__ = ["CounterBank"]


def _shift_sequence(length: int):
    """The narrowest shift register with feedback (``bits``, and the ``taps`` whose XNOR is
    shifted in at bit 0) whose states from 0 are ``length`` distinct ones, and those states."""
    for bits in range(1, length.bit_length() + 1):
        for others in range(bits):
            for taps in combinations(range(bits - 1), others):
                taps = (bits - 1, *taps)
                states, state = [], 0
                while state not in states and len(states) < length:
                    states.append(state)
                    feedback = 1 ^ (sum((state >> t) & 1 for t in taps) & 1)
                    state = ((state << 1) | feedback) & ((1 << bits) - 1)
                if len(states) == length:
                    return bits, taps, states
    raise AssertionError("a maximal-length register of length.bit_length() bits has them")


class CounterBank(wiring.Component):
    """``count`` event counters of 32 bits, totals in block RAM, read one at a time.

    The sweeper steps at one counter every cycle (see the module documentation): at counter
    ``i`` in the cycles ``k * count + i`` after reset, ``k`` = 0, 1, ...; the step of the first
    cycle after reset writes nothing. A read is taken in a cycle where ``rd_en`` and
    ``rd_ready`` are both high; ``rd_ready`` is high in the cycles when the sweeper steps at
    ``rd_addr`` and writes: a read waits at most ``count`` cycles.

    In the cycle after a read is taken in cycle t, ``rd_valid`` is high for one cycle and
    ``rd_data`` is the counter's total including every increment up to cycle t - 1's and none
    after (modulo 2**32). ``rd_data`` holds that value until the next read's result replaces
    it.

    A pending count holds at most ``count``: the increments of the ``count`` cycles since the
    counter's step before. It cannot overflow however reads come.

    Totals start at zero (the RAM's initial contents), and every pending count at 0. A domain
    reset leaves the totals, the pending counts and the sweeper's position as they are: the
    sweeper goes on stepping through it, but a step writes nothing in the cycle after each
    cycle of reset (as in the first cycle after power-on), so what such a step takes is lost
    (at most ``count`` increments).

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
        bits, self._taps, states = _shift_sequence(count + 1)
        #: Bits of each pending count's register.
        self.pending_bits = bits
        #: The register's state after ``k`` increments from 0, for ``k`` up to ``count``.
        self.pending_states = tuple(states)
        #: The pending counts' registers (for tests to watch, through :meth:`pending_count`).
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
        """The pending count a register of :attr:`pending` holds in ``state``."""
        return self.pending_states.index(state)

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

        ptr = Signal(range(n), reset_less=True)  # the counter stepped in this cycle
        nxt = Signal(range(n))
        # Low in the first cycle after reset, when the read port holds nothing yet.
        writes = Signal()
        m.d.comb += nxt.eq(Mux(ptr == n - 1, 0, ptr + 1))
        m.d.sync += [ptr.eq(nxt), writes.eq(1)]

        for i, reg in enumerate(pending):
            with m.If(ptr == i):
                m.d.sync += reg.eq(self.inc[i])  # the state after one increment is 1
            with m.Elif(self.inc[i]):
                feedback = ~Cat(*(reg[t] for t in self._taps)).xor()
                m.d.sync += reg.eq(Cat(feedback, reg[:-1]))

        took = Signal(range(n + 1))
        with m.Switch(Array(pending)[ptr]):
            for k, state in enumerate(self.pending_states):
                with m.Case(state):
                    m.d.comb += took.eq(k)
        total = Signal(32)
        m.d.comb += [
            rd.addr.eq(nxt),
            total.eq(rd.data + took),
            wr.en.eq(writes),
            wr.addr.eq(ptr),
            wr.data.eq(total),
            self.rd_ready.eq(writes & (ptr == self.rd_addr)),
        ]
        take = self.rd_en & self.rd_ready
        m.d.sync += self.rd_valid.eq(take)
        with m.If(take):
            m.d.sync += self.rd_data.eq(total)

        return m
