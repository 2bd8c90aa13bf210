"""A small first-in first-out queue in flip-flops, with a registered ``r_rdy``.

Kernels queue their results behind a fixed-latency pipeline. Amaranth's ``SyncFIFO`` derives
``r_rdy`` from its level with a comparator, and ``SyncFIFOBuffered`` adds a block RAM and its
own level logic; on the iCE40 either put several logic levels and a high-fanout enable between
the queue and whatever reads it, which made the queue the slowest path of a kernel. Here
``r_rdy`` is a flip-flop, and a read is one multiplexer from the slots.
"""

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisterQueue", "count_up_down"]


def count_up_down(m: Module, counter: Signal, up, down) -> Signal:
    """Step ``counter`` by ``up - down`` each cycle; return a flip-flop that is ``counter != 0``.

    The incremented and decremented values, and whether the counter is 0 or 1, come straight
    from the counter's flip-flops; ``up`` and ``down`` only select among them. Written as an
    adder, the two requests would sit in front of a carry chain and a comparator.
    """
    nonzero = Signal(init=counter.init != 0, name=f"{counter.name}_nonzero")
    with m.If(up & ~down):
        m.d.sync += [counter.eq(counter + 1), nonzero.eq(1)]
    with m.Elif(down & ~up):
        m.d.sync += [counter.eq(counter - 1), nonzero.eq(counter != 1)]
    return nonzero


class RegisterQueue(wiring.Component):
    """``depth`` entries of ``width`` bits.

    The caller must not write to a full queue (a kernel keeps count with credits): checking for
    it here would put a comparator on the write path.

    Parameters
    ----------
    width : int
        Bits per entry.
    depth : int
        Entries, a power of two (so the pointers wrap by themselves).

    Members
    -------
    w_en : In(1)
        Write ``w_data`` this cycle.
    w_data : In(width)
    r_rdy : Out(1)
        An entry is available on ``r_data`` (straight from a flip-flop).
    r_en : In(1)
        Take the entry on ``r_data`` this cycle (only while ``r_rdy``).
    r_data : Out(width)
    """

    def __init__(self, width: int, depth: int):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"RegisterQueue width must be a positive integer, not {width!r}")
        if not isinstance(depth, int) or depth < 1 or depth & (depth - 1):
            raise ValueError(f"RegisterQueue depth must be a power of two, not {depth!r}")
        self.width = width
        self.depth = depth
        super().__init__({
            "w_en": In(1), "w_data": In(width),
            "r_rdy": Out(1), "r_en": In(1), "r_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        slots = Array(Signal(self.width, name=f"slot{i}", reset_less=True)
                      for i in range(self.depth))
        wp = Signal(range(self.depth))
        rp = Signal(range(self.depth))
        count = Signal(range(self.depth + 1))

        write = self.w_en
        read = self.r_en & self.r_rdy
        m.d.comb += [
            self.r_data.eq(slots[rp]),
            self.r_rdy.eq(count_up_down(m, count, write, read)),
        ]
        with m.If(write):
            m.d.sync += [slots[wp].eq(self.w_data), wp.eq(wp + 1)]
        with m.If(read):
            m.d.sync += rp.eq(rp + 1)
        return m
