"""A first-in first-out queue of bytes in block RAM, for the bytes a UART receives."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .ram import NO_RW_CHECK, read_port

__all__ = ["ByteFifo"]


class ByteFifo(wiring.Component):
    """A queue of ``depth`` bytes in block RAM, and one more in its output register.

    The RAM's read port is the output register: a byte is read when the output is empty or
    being taken, so the queue passes a byte a cycle, and no address is read in the cycle it is
    written (a byte written is read at the earliest in the next cycle). Two pointers of one bit
    more than an address tell an empty RAM from a full one; there is no level counter.

    Parameters
    ----------
    depth : int
        Bytes the RAM holds, a power of two.

    Members
    -------
    w_stream : ``In(stream.Signature(8))``
        Bytes in; ``ready`` is low while the queue is full.
    r_stream : ``Out(stream.Signature(8))``
        Bytes out, in order.
    """

    w_stream: In(stream.Signature(8))
    r_stream: Out(stream.Signature(8))

    def __init__(self, depth: int):
        exact_log2(depth)  # a ValueError for a depth that is not a power of two
        self.depth = depth
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        bits = exact_log2(self.depth)
        # No byte is read in the cycle it is written (see above).
        m.submodules.storage = storage = Memory(shape=8, depth=self.depth, init=[],
                                                attrs=NO_RW_CHECK)
        wr = storage.write_port()
        rd = read_port(m, storage, "rd")

        wp = Signal(bits + 1)  # where the next byte is written
        rp = Signal(bits + 1)  # where the next byte is read
        empty = wp == rp
        full = (wp[:bits] == rp[:bits]) & (wp[bits] != rp[bits])

        w, r = self.w_stream, self.r_stream
        m.d.comb += [
            w.ready.eq(~full),
            wr.en.eq(w.valid & ~full),
            wr.addr.eq(wp[:bits]),
            wr.data.eq(w.payload),
        ]
        with m.If(wr.en):
            m.d.sync += wp.eq(wp + 1)

        load = ~empty & (~r.valid | r.ready)
        m.d.comb += [
            rd.en.eq(load),
            rd.addr.eq(rp[:bits]),
            r.payload.eq(rd.data),
        ]
        with m.If(load):
            m.d.sync += [rp.eq(rp + 1), r.valid.eq(1)]
        with m.Elif(r.ready):
            m.d.sync += r.valid.eq(0)
        return m
