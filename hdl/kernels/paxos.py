"""The Paxos acceptor in gateware: per-instance state in block RAM, a message in, its answer
out.

The rules are :mod:`offload.consensus.models`' (1A promised for a round ``>=`` the promise, 2A
voted for likewise, NACK otherwise, with the promise), the messages
:mod:`hdl.kernels.paxos_format`'s. A request is a batch of whole 1A/2A messages; the response
is their answers in order, then an empty beat with ``last``. A message the acceptor cannot take
(another type, an instance outside the table, round 0, an acceptor id of 8 or more), or a
request that ends inside a message, is answered with the answers to the messages before it and
``error``; the rest of the request is dropped.

A message is taken in ``message_bytes / width`` beats, its instance's state read in the next
cycle and written back in the one after, while its answer goes out of a register of its own, so
the next message comes in while the last answer goes out. After a reset the table is cleared,
a row a cycle, before the first message is taken.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..stream import byte_stream, request_stream
from .paxos_format import ACCEPT, ACCEPTED, HEADER_BYTES, MAX_ACCEPTORS, NACK, PREPARE, PROMISE

__all__ = ["PaxosAcceptor"]


class PaxosAcceptor(wiring.Component):
    """A Paxos acceptor for ``instances`` log positions (see the module doc).

    Parameters
    ----------
    instances : int
        Rows of the state table (promised round, voted round, value).
    value_bytes : int
        Size of a value; a message is ``16 + value_bytes`` bytes, a whole number of beats.
    width : int
        Bytes a beat.

    Members
    -------
    i_stream : ``In(request_stream(width))``
    o_stream : ``Out(byte_stream(width))``
    """

    operations = ("handle",)

    def __init__(self, instances: int = 256, value_bytes: int = 32, width: int = 8):
        size = HEADER_BYTES + value_bytes
        if size % width:
            raise ValueError(f"A message of {size} bytes is not a whole number of {width}-byte "
                             "beats")
        if instances < 1:
            raise ValueError(f"An acceptor needs at least one instance, not {instances!r}")
        self.instances, self.value_bytes, self.width = instances, value_bytes, width
        self.message_bytes = size
        beats = size // width
        # After a reset the table is cleared first; then a message's beats, its read and its
        # decision, and the answer's beats, each waiting up to ``fairness`` cycles.
        latency = instances + 2 * (beats + 3) * 2 + 8
        self.contract_bounds = {"latency": latency, "depth": latency + 4}
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        w, size, v = self.width, self.message_bytes, self.value_bytes
        beats = size // w
        i, o = self.i_stream, self.o_stream

        m.submodules.table = table = Memory(shape=64 + 8 * v, depth=self.instances, init=[])
        wp = table.write_port()
        rp = table.read_port(transparent_for=())

        CLEAR, IN, READ, DECIDE, DRAIN, END = range(6)
        state = Signal(range(6), init=CLEAR)
        final = Signal()
        bad = Signal()
        addr = Signal(range(self.instances + 1))

        # The message, shifted in a beat at a time from the top.
        msg = Signal(8 * size)
        got = Signal(range(beats + 1))
        kind, acceptor = msg[0:8], msg[8:16]
        instance, rnd, value = msg[32:64], msg[64:96], msg[128:]

        # The answer going out.
        ans = Signal(8 * size)
        left = Signal(range(beats + 1))  # its beats still to go

        with m.If(left != 0):
            m.d.comb += [o.valid.eq(1), o.payload.data.eq(ans[:8 * w]), o.payload.nbytes.eq(w)]
            with m.If(o.ready):
                m.d.sync += [ans.eq(ans >> (8 * w)), left.eq(left - 1)]
        with m.Elif(state == END):
            m.d.comb += [o.valid.eq(1), o.payload.last.eq(1), o.payload.error.eq(bad)]
            with m.If(o.ready):
                m.d.sync += [state.eq(IN), final.eq(0), bad.eq(0)]

        m.d.comb += i.ready.eq(~final & ((state == DRAIN) | ((state == IN) & (got != beats))))
        beat = i.valid & i.ready
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)

        def fail():
            m.d.sync += [bad.eq(1), state.eq(DRAIN)]

        m.d.comb += rp.addr.eq(instance)
        promised, voted, held = rp.data[0:32], rp.data[32:64], rp.data[64:]

        with m.Switch(state):
            with m.Case(CLEAR):
                m.d.comb += [wp.addr.eq(addr), wp.data.eq(0), wp.en.eq(1)]
                m.d.sync += addr.eq(addr + 1)
                with m.If(addr == self.instances - 1):
                    m.d.sync += [state.eq(IN), addr.eq(0)]

            with m.Case(IN):
                with m.If(got == beats):
                    m.d.comb += rp.en.eq(1)
                    m.d.sync += state.eq(READ)
                with m.Elif(beat & (i.payload.nbytes == w)):
                    m.d.sync += [msg.eq(Cat(msg[8 * w:], i.payload.data)), got.eq(got + 1)]
                with m.Elif(beat & (i.payload.nbytes != 0)):
                    fail()  # the request ends inside a message
                with m.Elif(final):
                    with m.If(got == 0):
                        m.d.sync += state.eq(END)
                    with m.Else():
                        fail()

            with m.Case(READ):  # the row is read; is the message one the acceptor takes?
                with m.If(((kind != PREPARE) & (kind != ACCEPT)) | (instance >= self.instances) |
                          (rnd == 0) | (acceptor >= MAX_ACCEPTORS)):
                    fail()
                with m.Else():
                    m.d.sync += state.eq(DECIDE)

            with m.Case(DECIDE):  # once the last answer is out: this one, and the row
                with m.If(left == 0):
                    header = Cat(acceptor, Const(0, 16), instance)  # bytes 1 to 7

                    def answer(kind_, *rest):
                        return ans.eq(Cat(Const(kind_, 8), header, *rest))

                    with m.If(rnd < promised):
                        m.d.sync += answer(NACK, promised)
                    with m.Elif(kind == PREPARE):
                        m.d.sync += answer(PROMISE, rnd, voted, held)
                        m.d.comb += [wp.addr.eq(instance), wp.en.eq(1),
                                     wp.data.eq(Cat(rnd, voted, held))]
                    with m.Else():
                        m.d.sync += answer(ACCEPTED, rnd, Const(0, 32), value)
                        m.d.comb += [wp.addr.eq(instance), wp.en.eq(1),
                                     wp.data.eq(Cat(rnd, rnd, value))]
                    m.d.sync += [left.eq(beats), got.eq(0), state.eq(IN)]

            with m.Case(DRAIN):  # drop the rest of a bad request
                m.d.sync += got.eq(0)
                with m.If(final):
                    m.d.sync += state.eq(END)

        return m
