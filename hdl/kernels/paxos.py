"""The Paxos acceptor and learner in gateware: per-instance state in block RAM, a message in,
its answer (if any) out.

The rules are :mod:`offload.consensus.models`' (the acceptor: 1A promised for a round ``>=``
the promise, 2A voted for likewise, NACK otherwise, with the promise; the learner: votes of one
round counted per distinct acceptor, a higher round starting the count again, an instance
delivered once at the quorum), the messages :mod:`hdl.kernels.paxos_format`'s. A request is a
batch of whole messages; the response is their answers in order (the acceptor answers every
message, the learner only the 2B that completes a quorum, with a DELIVER), then an empty beat
with ``last``. A message the role cannot take (another type, an instance outside the table,
round 0, an acceptor id of 8 or more), or a request that ends inside a message, is answered
with the answers to the messages before it and ``error``; the rest of the request is dropped.

A message is taken in ``message_bytes / width`` beats, its instance's row read in the next
cycle and written back in the one after, while its answer goes out of a register of its own,
so the next message comes in while the last answer goes out. After a reset the table is
cleared, a row a cycle, before the first message is taken.
"""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..stream import byte_stream, request_stream
from .paxos_format import (
    ACCEPT,
    ACCEPTED,
    DELIVER,
    HEADER_BYTES,
    MAX_ACCEPTORS,
    NACK,
    PREPARE,
    PROMISE,
)

__all__ = ["PaxosAcceptor", "PaxosLearner", "acceptor", "learner"]


class _MessageTable(wiring.Component):
    """What the acceptor and the learner share: a batch of messages in, a row of a table per
    message read and written back, an answer register out (see the module doc). A role gives
    the row's width, which messages it takes (:meth:`refuse`) and the decision
    (:meth:`decide`)."""

    operations = ("handle",)
    role = "role"
    row_bits = 0

    def __init__(self, instances: int, value_bytes: int, width: int):
        size = HEADER_BYTES + value_bytes
        if size % width:
            raise ValueError(f"A message of {size} bytes is not a whole number of {width}-byte "
                             "beats")
        if instances < 1:
            raise ValueError(f"A {self.role} needs at least one instance, not {instances!r}")
        self.instances, self.value_bytes, self.width = instances, value_bytes, width
        self.message_bytes = size
        beats = size // width
        # After a reset the table is cleared first; then a message's beats, its read and its
        # decision, and the answer's beats, each waiting up to ``fairness`` cycles.
        latency = instances + 2 * (beats + 3) * 2 + 8
        self.contract_bounds = {"latency": latency, "depth": latency + 4}
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def refuse(self, msg):
        """Whether the role cannot take the message (its fields: see :meth:`elaborate`)."""
        raise NotImplementedError

    def decide(self, m: Module, msg, row, new_row, write, answer) -> None:
        """The decision for a message the role takes: ``row`` is its instance's row as read;
        drive ``new_row`` and ``write`` (comb) to write it back, and add ``answer(kind, *rest)``
        to ``m.d.sync`` to answer (``rest``: the fields after the instance)."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        w, size = self.width, self.message_bytes
        beats = size // w
        i, o = self.i_stream, self.o_stream

        m.submodules.table = table = Memory(shape=self.row_bits, depth=self.instances, init=[])
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
        fields = {"kind": msg[0:8], "acceptor": msg[8:16], "instance": msg[32:64],
                  "round": msg[64:96], "value": msg[128:]}

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

        m.d.comb += rp.addr.eq(fields["instance"])
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
                with m.Elif(beat & (i.payload.op != 0)):
                    fail()  # an operation the role does not have
                with m.Elif(beat & (i.payload.nbytes == w)):
                    m.d.sync += [msg.eq(Cat(msg[8 * w:], i.payload.data)), got.eq(got + 1)]
                with m.Elif(beat & (i.payload.nbytes != 0)):
                    fail()  # the request ends inside a message
                with m.Elif(final):
                    with m.If(got == 0):
                        m.d.sync += state.eq(END)
                    with m.Else():
                        fail()

            with m.Case(READ):  # the row is read; is the message one the role takes?
                with m.If(self.refuse(fields) | (fields["instance"] >= self.instances) |
                          (fields["round"] == 0) | (fields["acceptor"] >= MAX_ACCEPTORS)):
                    fail()
                with m.Else():
                    m.d.sync += state.eq(DECIDE)

            with m.Case(DECIDE):  # once the last answer is out: this one, and the row
                with m.If(left == 0):
                    def answer(kind, *rest):
                        # An acceptor's answer carries its id back; a learner's DELIVER, 0.
                        who = Const(0, 8) if kind == DELIVER else fields["acceptor"]
                        m.d.sync += [ans.eq(Cat(Const(kind, 8), who, Const(0, 16),
                                                fields["instance"], *rest)),
                                     left.eq(beats)]

                    new_row = Signal(self.row_bits)
                    write = Signal()
                    self.decide(m, fields, rp.data, new_row, write, answer)
                    m.d.comb += [wp.addr.eq(fields["instance"]), wp.data.eq(new_row),
                                 wp.en.eq(write)]
                    m.d.sync += [got.eq(0), state.eq(IN)]

            with m.Case(DRAIN):  # drop the rest of a bad request
                m.d.sync += got.eq(0)
                with m.If(final):
                    m.d.sync += state.eq(END)

        return m


class PaxosAcceptor(_MessageTable):
    """A Paxos acceptor for ``instances`` log positions (see the module doc): a row is the
    promised round, the round last voted in, and the value voted for.

    Parameters
    ----------
    instances : int
        Rows of the state table.
    value_bytes : int
        Size of a value; a message is ``16 + value_bytes`` bytes, a whole number of beats.
    width : int
        Bytes a beat.

    Members
    -------
    i_stream : ``In(request_stream(width))``
    o_stream : ``Out(byte_stream(width))``
    """

    role = "acceptor"

    def __init__(self, instances: int = 256, value_bytes: int = 32, width: int = 8):
        self.row_bits = 64 + 8 * value_bytes
        super().__init__(instances, value_bytes, width)

    def refuse(self, msg):
        return (msg["kind"] != PREPARE) & (msg["kind"] != ACCEPT)

    def decide(self, m, msg, row, new_row, write, answer):
        promised, voted, held = row[0:32], row[32:64], row[64:]
        rnd = msg["round"]
        with m.If(rnd < promised):
            answer(NACK, promised)
        with m.Elif(msg["kind"] == PREPARE):
            answer(PROMISE, rnd, voted, held)
            m.d.comb += [new_row.eq(Cat(rnd, voted, held)), write.eq(1)]
        with m.Else():
            answer(ACCEPTED, rnd, Const(0, 32), msg["value"])
            m.d.comb += [new_row.eq(Cat(rnd, rnd, msg["value"])), write.eq(1)]


class PaxosLearner(_MessageTable):
    """A Paxos learner for ``instances`` log positions and a ``quorum`` of acceptors (see the
    module doc): a row is the round whose votes are counted, a bit per acceptor that voted in
    it, whether the instance is delivered, and the value.

    Parameters
    ----------
    instances : int
        Rows of the state table.
    quorum : int
        Votes of one round that decide an instance, 1 to 8.
    value_bytes : int
        Size of a value.
    width : int
        Bytes a beat.
    """

    role = "learner"

    def __init__(self, instances: int = 256, quorum: int = 2, value_bytes: int = 32,
                 width: int = 8):
        if not 1 <= quorum <= MAX_ACCEPTORS:
            raise ValueError(f"A quorum is 1 to {MAX_ACCEPTORS}, not {quorum!r}")
        self.quorum = quorum
        self.row_bits = 32 + 8 + 1 + 8 * value_bytes
        super().__init__(instances, value_bytes, width)

    def refuse(self, msg):
        return msg["kind"] != ACCEPTED

    def decide(self, m, msg, row, new_row, write, answer):
        counted, votes, delivered, held = row[0:32], row[32:40], row[40], row[41:]
        rnd = msg["round"]
        bit = Signal(8)
        m.d.comb += bit.eq(1 << msg["acceptor"][:3])
        now = Signal(8)
        kept = Signal.like(held)
        with m.If(rnd > counted):
            m.d.comb += [now.eq(bit), kept.eq(msg["value"])]
        with m.Else():
            m.d.comb += [now.eq(votes | bit), kept.eq(held)]
        count = sum(now[k] for k in range(8))
        with m.If(~delivered & (rnd >= counted)):
            done = count >= self.quorum
            m.d.comb += [new_row.eq(Cat(rnd, now, done, kept)), write.eq(1)]
            with m.If(done):
                answer(DELIVER, rnd, Const(0, 32), kept)


def acceptor(instances: int = 256, width: int = 8, value_bytes: int = 32):
    """The acceptor a device is built with: at width 1 the narrow one
    (:class:`~hdl.kernels.paxos_narrow.NarrowAcceptor`: a byte a beat, about 120 cycles a
    message, the table in SPRAM on an iCE40 UltraPlus), otherwise :class:`PaxosAcceptor` (a
    message in ``48 / width`` beats, the table in block RAM)."""
    if width == 1:
        from .paxos_narrow import NarrowAcceptor

        return NarrowAcceptor(instances, value_bytes, 1)
    return PaxosAcceptor(instances, value_bytes, width)


def learner(instances: int = 256, quorum: int = 2, width: int = 8, value_bytes: int = 32):
    """The learner a device is built with: narrow at width 1, as :func:`acceptor`."""
    if width == 1:
        from .paxos_narrow import NarrowLearner

        return NarrowLearner(instances, quorum, value_bytes, 1)
    return PaxosLearner(instances, quorum, value_bytes, width)
