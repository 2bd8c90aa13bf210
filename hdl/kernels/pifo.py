"""The PIFO (push-in first-out queue) in gateware: a batch of operations in, a record for each
pop out, the queue kept from batch to batch.

The records are :mod:`hdl.kernels.scheduling_format`'s, the rules
:class:`offload.scheduling.models.PifoModel`'s and the answers
:func:`offload.scheduling.models.pifo_answer`'s: a request is a batch of 8-byte operations
(PUSH with a rank and an item, or POP); the response is an 8-byte popped record for each pop,
in order, then an empty beat with ``last``. A push to a full PIFO, a pop from an empty one, a
kind that is neither, or a request that ends inside a record, is answered with the records of
the pops before it, then a refusal record (why, and the operation's number in the request),
and ``error``; the rest of the request is dropped and has no effect. Every opcode the kernel
has is handled alike: the records say what to do. An opcode it does not have (the link never
sends one) is refused as a bad kind at operation 0, with nothing done.

The queue is :class:`PifoCore`, the shift-register PIFO of Sivaraman et al. ("Programmable
packet scheduling at line rate", SIGCOMM 2016): ``capacity`` entries held sorted by rank in
flip-flops, a comparator each, one push or one pop a cycle. It is kept in registers with
initial values, so it needs no clearing phase: a reset of the kernel's domain empties it, and
nothing else does.

The kernel's pipeline, at ``width`` bytes a beat (a record is ``8 / width`` beats):

* the record register ``rec`` takes a record a beat at a time (shifted in from the top);
* a whole record is executed in the cycle after its last beat is taken, while the first beat
  of the next one is taken: a push goes into the core, a pop takes the core's head into
  ``popped``, a queue of two entries (waiting, if both are taken, for one to leave);
* the oldest popped entry moves into the output shift register ``ans`` when that is empty or
  giving out its last beat, and ``ans`` goes out a beat at a time;
* a refused request is read to its end (nothing more is executed); once every pop before the
  refusal is out, the refusal record goes through ``ans``, then the end beat.

So at width 8 the kernel takes one record a cycle, pushes and pops alike, for as long as the
output is ready (II = 1); at narrower widths one beat a cycle. A pop is decided on flip-flops
only (a free place in ``popped``), so ``i_stream.ready`` and the core's controls never wait on
``o_stream.ready``, which enters only the output registers' enables; that is what the second
place in ``popped`` is for (with one, a run of pops would go at one every other cycle).
``o_stream.valid`` never waits on ``o_stream.ready`` either.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..queue import RegisterQueue
from ..stream import WIDTHS, byte_stream, request_stream
from .scheduling_format import (
    BAD_KIND,
    CUT,
    EMPTY,
    FULL,
    OP_BYTES,
    POP,
    POPPED_BYTES,
    PUSH,
    REFUSED,
)

__all__ = ["ENTRY", "PifoCore", "Pifo", "pifo"]

#: An entry of the core's array: whether it holds an item, its rank and its item.
ENTRY = data.StructLayout({"valid": 1, "rank": 16, "item": 32})


class PifoCore(wiring.Component):
    """``capacity`` entries kept sorted by rank, the first pushed first among equal ranks; one
    push, one pop, or both, a cycle.

    ``entries[0]`` is the head. The valid entries are always ``entries[0 : count]`` (the valid
    bits are a thermometer code) and their ranks do not decrease; ``count`` is a register of
    its own, always the number of valid entries. A push compares the new rank with every entry
    (``capacity`` comparators, ``<=``), takes the place after every entry whose rank is no
    larger (so equal ranks stay first in, first out) and shifts the entries behind it one
    place back; a pop shifts every entry one place forward, the tail filled with an invalid
    entry of zeros.

    A push and a pop in the same cycle: the pop happens first. The head as it was goes (it is
    what ``head_rank``/``head_item`` show in that cycle, so a consumer latches it then), and
    the new entry is inserted among the rest, so a push of a rank smaller than everything held
    comes out next, not now. A push to a full queue with a pop in the same cycle is taken
    (the pop makes room). A pop of an empty queue is ignored (a push beside it is still
    taken), and so is a push to a full queue without a pop: the entries and ``count`` are
    unchanged by them. The kernel never does any of these three; :class:`Pifo` asks for one
    operation a cycle, and only those the queue can take.

    Parameters
    ----------
    capacity : int
        Entries, 1 or more.

    Members
    -------
    push, push_rank, push_item : ``In(1)``, ``In(16)``, ``In(32)``
        Insert an entry this cycle.
    pop : ``In(1)``
        Remove the head this cycle.
    head_rank, head_item : ``Out(16)``, ``Out(32)``
        The head (``entries[0]``; meaningless while ``empty``).
    count : ``Out(range(capacity + 1))``
        Entries held.
    full, empty : ``Out(1)``
        ``count == capacity``, ``count == 0`` (read from the last and first valid bits).

    Attributes
    ----------
    entries : list of ``Signal(ENTRY)``
        The array, for a proof to look into.
    """

    def __init__(self, capacity: int = 16):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"A PIFO holds at least one entry, not {capacity!r}")
        self.capacity = capacity
        super().__init__({
            "push": In(1), "push_rank": In(16), "push_item": In(32), "pop": In(1),
            "head_rank": Out(16), "head_item": Out(32), "count": Out(range(capacity + 1)),
            "full": Out(1), "empty": Out(1),
        })
        self.entries = [Signal(ENTRY, name=f"entry{k}") for k in range(capacity)]

    def goes_before(self, held, new):
        """Whether a held entry of rank ``held`` stays ahead of a new one of rank ``new``: no
        larger (so equal ranks stay first in, first out)."""
        return held <= new

    def elaborate(self, platform):
        m = Module()
        entries, c = self.entries, self.capacity

        count = Signal(range(c + 1))
        m.d.comb += [
            self.head_rank.eq(entries[0].rank), self.head_item.eq(entries[0].item),
            self.count.eq(count), self.full.eq(entries[-1].valid),
            self.empty.eq(~entries[0].valid),
        ]

        popping = Signal()
        pushing = Signal()
        m.d.comb += [
            popping.eq(self.pop & entries[0].valid),
            pushing.eq(self.push & (~entries[-1].valid | popping)),
        ]
        m.d.sync += count.eq(count + pushing - popping)

        new = Signal(ENTRY)
        m.d.comb += [new.valid.eq(1), new.rank.eq(self.push_rank), new.item.eq(self.push_item)]

        # ``before[k]``: entry k goes before the new one (held, and of a rank no larger).
        before = [Signal(name=f"before{k}") for k in range(c)]
        for k in range(c):
            m.d.comb += before[k].eq(entries[k].valid &
                                     self.goes_before(entries[k].rank, self.push_rank))
        before.append(Const(0, 1))
        blank = Const(0, ENTRY.size)
        for k in range(c):
            here = entries[k].as_value()
            behind = entries[k + 1].as_value() if k + 1 < c else blank
            ahead = entries[k - 1].as_value() if k else blank
            # The array the new entry goes into: the entries as they are, or, when popping,
            # each moved one place forward. Place k holds ``rest``, place k - 1 ``rest_ahead``.
            rest = Mux(popping, behind, here)
            rest_ahead = Mux(popping, here, ahead)
            stays = Mux(popping, before[k + 1], before[k])
            # Place k takes the new entry if its occupant goes after it and the one ahead of
            # it (if any) before it.
            takes = Mux(popping, before[k], before[k - 1]) if k else Const(1, 1)
            with m.If(pushing):
                with m.If(stays):
                    m.d.sync += entries[k].eq(rest)
                with m.Elif(takes):
                    m.d.sync += entries[k].eq(new)
                with m.Else():
                    m.d.sync += entries[k].eq(rest_ahead)
            with m.Elif(popping):
                m.d.sync += entries[k].eq(behind)
        return m


class Pifo(wiring.Component):
    """The PIFO kernel (see the module doc): ``capacity`` entries of a u16 rank and a u32
    item.

    Parameters
    ----------
    capacity : int
        Entries the queue holds.
    width : int
        Bytes a beat: 1, 2, 4 or 8.

    Members
    -------
    i_stream : ``In(request_stream(width))``
    o_stream : ``Out(byte_stream(width))``
    """

    operations = ("run", "push", "pop")

    def __init__(self, capacity: int = 16, width: int = 8):
        if width not in WIDTHS:
            raise ValueError(f"Beat width must be one of {WIDTHS} bytes, not {width!r}")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"A PIFO holds at least one entry, not {capacity!r}")
        self.capacity, self.width = capacity, width
        beats = OP_BYTES // width
        # After a request's last beat is taken, at most its last record is still to execute,
        # with two popped records waiting in ``popped`` and one in ``ans``, or a refusal to
        # come: 5 records and the end beat to give out, each beat waiting up to a cycle for
        # ``o_stream.ready`` under the contract's fairness of 2, and a few cycles to execute
        # and load. A request beat waits no longer (behind the last response, or for a place
        # in ``popped``).
        latency = 2 * (5 * beats + 1) + 8
        self.contract_bounds = {"latency": latency, "depth": latency + 4}
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        w = self.width
        beats = OP_BYTES // w
        i, o = self.i_stream, self.o_stream

        m.submodules.core = core = PifoCore(self.capacity)

        IN, DRAIN, END = range(3)
        state = Signal(range(3), init=IN)
        final = Signal()  # the request's last beat is taken
        bad = Signal()  # the request is refused: drop the rest, then say why, with ``error``
        why = Signal(3)  # FULL, EMPTY, BAD_KIND or CUT
        told = Signal()  # the refusal record is in the output register (or out)
        # Operations of the request executed: when it is refused, the refused one's number.
        number = Signal(32)

        # The record coming in, shifted in a beat at a time from the top.
        rec = Signal(8 * OP_BYTES, reset_less=True)
        got = Signal(range(beats + 1))
        whole = Signal()
        m.d.comb += whole.eq(got == beats)
        rank, item = rec[16:32], rec[32:64]
        # The record's kind, decoded as its first beat comes in (not from ``rec`` when it is
        # whole: the decision to execute is in front of ``i_stream.ready``).
        is_push = Signal()
        is_pop = Signal()

        # Popped entries waiting for the output register (two, so that a pop need not wait on
        # ``o_stream.ready``: see the module doc), and the output register.
        m.submodules.popped = popped = RegisterQueue(16 + 32, 2)
        queued = Signal(range(3))  # entries in ``popped``
        ans = Signal(8 * POPPED_BYTES, reset_less=True)
        left = Signal(range(beats + 1))  # the output register's beats still to go

        # ---- Output -------------------------------------------------------------------------
        with m.If(left != 0):
            m.d.comb += [o.valid.eq(1), o.payload.data.eq(ans[:8 * w]), o.payload.nbytes.eq(w)]
            with m.If(o.ready):
                m.d.sync += [ans.eq(ans >> (8 * w)), left.eq(left - 1)]
        with m.Elif((state == END) & (queued == 0)):
            with m.If(bad & ~told):  # the pops before it are out: the refusal record next
                m.d.sync += [ans.eq(Cat(why, Const(0, 5 + 16), Const(REFUSED, 8), number)),
                             left.eq(beats), told.eq(1)]
            with m.Else():
                m.d.comb += [o.valid.eq(1), o.payload.last.eq(1), o.payload.error.eq(bad)]
                with m.If(o.ready):
                    m.d.sync += [state.eq(IN), final.eq(0), bad.eq(0), told.eq(0),
                                 number.eq(0)]
        load = popped.r_rdy & ((left == 0) | ((left == 1) & o.ready))
        m.d.comb += popped.r_en.eq(load)
        with m.If(load):
            m.d.sync += [ans.eq(Cat(popped.r_data[:16], Const(0, 16), popped.r_data[16:])),
                         left.eq(beats)]

        # ---- The whole record in ``rec``: executed, waiting, or refused --------------------
        do_push = Signal()
        do_pop = Signal()
        refuse = Signal()
        m.d.comb += [
            do_push.eq((state == IN) & whole & is_push & ~core.full),
            do_pop.eq((state == IN) & whole & is_pop & ~core.empty & (queued != 2)),
            refuse.eq(whole & ((is_push & core.full) | (is_pop & core.empty) |
                               ~(is_push | is_pop))),
            core.push.eq(do_push), core.push_rank.eq(rank), core.push_item.eq(item),
            core.pop.eq(do_pop),
        ]
        done = do_push | do_pop
        with m.If(done):
            m.d.sync += number.eq(number + 1)
        m.d.comb += [popped.w_en.eq(do_pop),
                     popped.w_data.eq(Cat(core.head_rank, core.head_item))]
        with m.If(do_pop & ~load):
            m.d.sync += queued.eq(queued + 1)
        with m.Elif(load & ~do_pop):
            m.d.sync += queued.eq(queued - 1)

        # ---- Input --------------------------------------------------------------------------
        m.d.comb += i.ready.eq(~final & ((state == DRAIN) | ((state == IN) & (~whole | done))))
        beat = i.valid & i.ready
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)
        # Every beat taken is shifted in (one that is not a whole beat of a record refuses the
        # request, and then what ``rec`` holds no longer matters), so that the register's
        # enable is the handshake alone.
        with m.If(beat):
            m.d.sync += rec.eq(Cat(rec[8 * w:], i.payload.data))
            with m.If((got == 0) | whole):  # a record's first beat: its kind
                m.d.sync += [is_push.eq(i.payload.data[:8] == PUSH),
                             is_pop.eq(i.payload.data[:8] == POP)]

        def fail(cause):
            m.d.sync += [bad.eq(1), why.eq(cause), state.eq(DRAIN)]

        with m.Switch(state):
            with m.Case(IN):
                with m.If(done):
                    m.d.sync += got.eq(0)
                with m.If(refuse):  # no beat is taken: ``ready`` is low
                    fail(Mux(is_push, FULL, Mux(is_pop, EMPTY, BAD_KIND)))
                with m.Elif(beat & (i.payload.op >= len(self.operations))):
                    fail(BAD_KIND)  # an operation the kernel does not have
                with m.Elif(beat & (i.payload.nbytes == w)):
                    m.d.sync += got.eq(Mux(done, 1, got + 1))
                with m.Elif(beat & (i.payload.nbytes != 0)):
                    fail(CUT)  # the request ends inside a record
                with m.Elif(final & (got == 0)):
                    m.d.sync += state.eq(END)
                with m.Elif(final & ~whole):
                    fail(CUT)  # the request ended inside a record

            with m.Case(DRAIN):  # drop the rest of a refused request
                m.d.sync += got.eq(0)
                with m.If(final):
                    m.d.sync += state.eq(END)

        return m


def pifo(capacity: int = 16, width: int = 8) -> Pifo:
    """The kernel a device is built with (the registry's factory)."""
    return Pifo(capacity, width)
