"""The packet scheduler kernel: a trace of arrivals in, the departures its server grants out.

The server is :func:`offload.scheduling.models.schedule`'s, cycle for cycle of *simulated* time
(its module doc defines it; the records are :mod:`hdl.kernels.scheduling_format`'s), and the
answer to a request is :func:`offload.scheduling.models.scheduler_answer`'s, byte for byte:
the departure records ``(time, queue)`` in order, then an empty beat with ``last``, and
``error`` when the trace is refused (an arrival to a queue the kernel does not have, of length
0, earlier than the one before it, to a full queue; a request that ends inside a record; an
opcode other than 0, refused before anything is answered). The departures granted before the
refusal is seen are sent, and the rest of the request is dropped. Each request is a trace of
its own: the queues are empty and simulated time ``t`` is 0 at its start, and the END beat
resets every register, so nothing is kept from one request to the next.

**A clock cycle** does at most one of two things:

* *take an arrival*: the next arrival record, once whole, is checked (queue, length, time not
  before ``t``) and, if its time is ``t``, or no packet is held (``t`` then jumps to its time),
  joins its queue (refused if the queue holds ``depth`` packets);
* *take a step* at ``t``, only once no more arrivals of time ``t`` can come (the next whole
  record is of a later time, or the request has ended, and then the queues drain): the
  policy's decision, a departure record ``(t, queue)`` loaded into the output register if it
  grants, and ``t + 1``.

So an arrival takes one cycle and a step one cycle, for every policy (deficit round robin
included, see below); a grant waits for the output register, which takes a record a cycle at
8 bytes a beat (``o_stream.ready`` permitting) and one every ``8 / width`` cycles below that. A
record comes in over ``8 / width`` beats, shifted in while the record before it waits for its
turn, so at 8 bytes a beat the kernel takes a record a cycle, and at narrower widths the input
and the output are busy at the same time. At 8 bytes a beat, offered a record a cycle and
always ready, a request takes a cycle an arrival, a cycle a step, and 2 more (the END beat).

Built alone for the iCE40 UP5K (8 queues of 16 packets, a byte a beat): about 630 logic cells
and 22 MHz for ``sp`` and ``rr``, 700 and 21 MHz for ``wrr``, 1,360 and one block RAM at 18 MHz
for ``drr``; the longest path is a cycle's decision (the next arrival's checks and 48-bit
comparisons with ``t``, then the enables of the registers it updates).

**Storage.** Each queue's packet count is a register (``range(depth + 1)``), for every policy:
strict priority is :func:`hdl.arbiter.first_set` of the queues holding packets, round robin
:class:`hdl.arbiter.RoundRobin` (its grant is the one a formal fairness proof is run on),
weighted round robin two registers, the round ``r`` and the first queue it may still grant
(the first eligible queue of the rest of round ``r``; else the first held queue with weight
``> r``, in round ``r + 1``; else round 1 from queue 0: a weight ``>= r + 1`` is ``>= r``, so no
other round can have an eligible queue). Deficit round robin also keeps each packet's length,
in a :class:`~amaranth.lib.memory.Memory` of ``queues * 2**ceil(log2(depth))`` 16-bit words (a
queue's slots at ``Cat(pointer, queue)``: no multiplier; ``queues * depth`` words when
``depth`` is a power of two), with a head and a tail pointer a queue; and its active list: the
head queue and its deficit in registers, the rest a ring of ``queues - 1`` (queue, deficit)
registers, a deficit travelling with its queue through the list (17 bits: at most a quantum
plus a length less one). The memory's read port is synchronous: its address is the head
packet of the head queue *after* this cycle's decision (computed combinationally: the same
packet, the next one of the same queue, or the head packet of the queue next in the list), so
that the length is there when the next step wants it; the one packet written and wanted in the
next cycle (an arrival to an empty list) is passed round the memory in a register. A DRR step
is therefore one cycle too; the path it costs is the memory's output, the 17-bit comparison
with the deficit, and the choice of the next address.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..arbiter import RoundRobin, first_set
from ..stream import WIDTHS, byte_stream, request_stream
from .scheduling_format import ARRIVAL_BYTES, DEPARTURE_BYTES, MAX_LENGTH, MAX_QUEUES

__all__ = ["Scheduler", "scheduler", "MAX_WEIGHT", "MAX_QUANTUM"]

MAX_WEIGHT = 255
MAX_QUANTUM = MAX_LENGTH

_DEFICIT_BITS = (MAX_QUANTUM + MAX_LENGTH - 1).bit_length()

# The stream contract's fairness (``hdl.contract.ContractBounds``): an output beat may wait
# this many cycles.
_FAIRNESS = 2


class Scheduler(wiring.Component):
    """A packet scheduler of ``queues`` FIFO queues under ``policy`` (see the module doc).

    Parameters
    ----------
    queues : int
        1 to 16.
    policy : str
        ``"sp"``, ``"rr"``, ``"wrr"`` or ``"drr"``.
    weights : tuple of int, optional
        ``wrr``: one a queue, 1 to 255.
    quanta : tuple of int, optional
        ``drr``: bytes, one a queue, 1 to 65535.
    depth : int
        Packets each queue holds (the model's ``capacity``).
    width : int
        Bytes a beat: 1, 2, 4 or 8.

    Members
    -------
    i_stream : ``In(request_stream(width))``
    o_stream : ``Out(byte_stream(width))``
    """

    operations = ("run",)

    def __init__(self, queues: int = 4, policy: str = "rr",
                 weights: tuple[int, ...] | None = None, quanta: tuple[int, ...] | None = None,
                 depth: int = 16, width: int = 8):
        from offload.scheduling.models import check_policy

        self._MustUse__silence = True  # no warning for a kernel refused here
        if not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
            raise ValueError(f"A scheduler has 1 to {MAX_QUEUES} queues, not {queues!r}")
        check_policy(queues, policy, weights, quanta)
        weights = tuple(weights) if policy == "wrr" else None
        quanta = tuple(quanta) if policy == "drr" else None
        if weights is not None and max(weights) > MAX_WEIGHT:
            raise ValueError(f"A weight is 1 to {MAX_WEIGHT}, not {max(weights)!r}")
        if quanta is not None and max(quanta) > MAX_QUANTUM:
            raise ValueError(f"A quantum is 1 to {MAX_QUANTUM} bytes, not {max(quanta)!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"A queue holds at least one packet, not {depth!r}")
        if width not in WIDTHS:
            raise ValueError(f"Beat width must be one of {WIDTHS} bytes, not {width!r}")
        self.queues, self.policy, self.weights, self.quanta = queues, policy, weights, quanta
        self.depth, self.width = depth, width
        self.contract_bounds = self._bounds()
        self._MustUse__silence = False
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def _bounds(self) -> dict:
        """The response to a request ends once the packets held and the one arrival waiting
        have gone (each a record of ``8 / width`` beats, a beat waiting up to the fairness),
        with the DRR rotations before each (a rotation adds a quantum, so a packet waits for at
        most ``ceil(65535 / quantum)`` of its queue's), and then the END beat."""
        beats = DEPARTURE_BYTES // self.width
        packets = self.queues * self.depth + 1
        rotations = 0
        if self.policy == "drr":
            rotations = packets * max(-(-MAX_LENGTH // q) for q in self.quanta)
        latency = packets * beats * _FAIRNESS + rotations + _FAIRNESS + 4
        return {"latency": latency, "depth": latency + 4}

    def elaborate(self, platform):
        m = Module()
        n, w, depth = self.queues, self.width, self.depth
        beats = ARRIVAL_BYTES // w
        i, o = self.i_stream, self.o_stream

        RUN, DRAIN, END = range(3)
        state = Signal(range(3), init=RUN)
        final = Signal()  # the request's last beat is taken
        cut = Signal()  # the request ends inside a record
        bad = Signal()  # the response ends with error
        clear = Signal()  # the END beat is taken: every register back to its initial value

        def fail():
            m.d.sync += [bad.eq(1), state.eq(DRAIN)]

        # -- The output: a departure record in a register, beat by beat, then the END beat.
        ans = Signal(8 * DEPARTURE_BYTES)
        left = Signal(range(beats + 1))  # beats of ``ans`` still to go
        out_free = Signal()  # ``ans`` may take a record this cycle
        with m.If(left != 0):
            m.d.comb += [o.valid.eq(1), o.payload.data.eq(ans[:8 * w]), o.payload.nbytes.eq(w)]
            with m.If(o.ready):
                m.d.sync += left.eq(left - 1)
                if beats > 1:
                    m.d.sync += ans.eq(ans >> (8 * w))
        with m.Elif(state == END):
            m.d.comb += [o.valid.eq(1), o.payload.last.eq(1), o.payload.error.eq(bad)]
            m.d.comb += clear.eq(o.ready)
        m.d.comb += out_free.eq((left == 0) | ((left == 1) & o.ready))

        # -- The input: beats shifted into ``acc`` until a record is whole, then the record
        # waits in ``nxt`` for its turn to join, while the next one comes into ``acc``.
        acc = Signal(8 * (ARRIVAL_BYTES - w))
        got = Signal(range(beats))  # beats in ``acc``
        nxt = Signal(8 * ARRIVAL_BYTES)
        nxt_valid = Signal()
        take = Signal()  # ``nxt`` joins its queue this cycle
        completes = got == beats - 1  # the next full beat completes a record
        m.d.comb += i.ready.eq(~final & ((state == DRAIN) |
                                         ((state == RUN) & (~completes | ~nxt_valid | take))))

        a_time, a_len, a_q = nxt[0:32], nxt[32:48], nxt[48:56]

        t = Signal(48)
        count = [Signal(range(depth + 1), name=f"count{q}") for q in range(n)]
        counts = Array(count)
        nonempty = Signal(n)
        m.d.comb += nonempty.eq(Cat(c != 0 for c in count))
        held = nonempty.any()

        # -- The decision of the cycle: take the arrival, or step, or neither.
        join = Signal()  # ``nxt`` joins queue ``a_q``, at time ``a_time``
        step = Signal()  # a step at ``t`` is due (it may wait for the output register)
        with m.If(state == RUN):
            with m.If(nxt_valid):
                with m.If((a_q >= n) | (a_len == 0) | (a_time < t)):
                    fail()
                with m.Elif((a_time == t) | ~held):
                    with m.If(counts[a_q] == depth):
                        fail()
                    with m.Else():
                        m.d.comb += join.eq(1)
                with m.Else():
                    m.d.comb += step.eq(1)
            with m.Elif(cut):
                fail()
            with m.Elif(final):
                with m.If(held):
                    m.d.comb += step.eq(1)
                with m.Else():
                    m.d.sync += state.eq(END)
        with m.If(state == DRAIN):
            with m.If(final):
                m.d.sync += state.eq(END)

        # The policy: a grant (``grant`` of queue ``grant_q``) or, for DRR, a rotation; ``emit``
        # when the grant is taken (the output register takes its record), ``fire`` when the
        # step is (a grant taken or a rotation).
        grant = Signal()
        grant_q = Signal(range(max(n, 2)))
        rotate = Signal()
        emit = Signal()
        fire = Signal()
        m.d.comb += [emit.eq(step & grant & out_free), fire.eq(emit | (step & rotate))]
        getattr(self, f"_{self.policy}")(m, nonempty, counts, grant, grant_q, rotate, join,
                                          emit, fire, nxt, step)

        with m.If(join):
            m.d.sync += [t.eq(a_time), nxt_valid.eq(0)]
            m.d.comb += take.eq(1)
        with m.If(fire):
            m.d.sync += t.eq(t + 1)
        with m.If(emit):
            m.d.sync += [ans.eq(Cat(t, grant_q)), left.eq(beats)]
        for q in range(n):
            with m.If(join & (a_q == q)):
                m.d.sync += count[q].eq(count[q] + 1)
            with m.Elif(emit & (grant_q == q)):
                m.d.sync += count[q].eq(count[q] - 1)

        # -- The beats taken (after ``take``, so that a record completed in the cycle the
        # last one joins is kept).
        beat = i.valid & i.ready
        full_beat = i.payload.nbytes == w
        with m.If(beat):
            with m.If(i.payload.last):
                m.d.sync += final.eq(1)
            with m.If(state == RUN):
                with m.If(i.payload.op != 0):
                    fail()  # an operation the kernel does not have
                with m.Elif(cut):
                    pass  # the rest of a request cut inside a record
                with m.Elif(full_beat):
                    with m.If(completes):
                        m.d.sync += [nxt.eq(Cat(acc, i.payload.data)), nxt_valid.eq(1)]
                        if beats > 1:
                            m.d.sync += got.eq(0)
                    with m.Else():
                        if beats > 1:
                            m.d.sync += [acc.eq(Cat(acc[8 * w:], i.payload.data)),
                                         got.eq(got + 1)]
                        with m.If(i.payload.last):
                            m.d.sync += cut.eq(1)
                with m.Elif(i.payload.nbytes != 0):
                    m.d.sync += cut.eq(1)  # a partial beat: the request ends inside a record
                with m.Elif(i.payload.last & (got != 0)):
                    m.d.sync += cut.eq(1)

        top = Module()
        top.submodules.core = ResetInserter(clear)(m)
        return top

    # -- The policies ---------------------------------------------------------------------------

    def _sp(self, m, nonempty, counts, grant, grant_q, rotate, join, emit, fire, nxt, step):
        first, any_ = first_set(m, nonempty, "sp_first")
        m.d.comb += [grant.eq(any_), grant_q.eq(first)]

    def _rr(self, m, nonempty, counts, grant, grant_q, rotate, join, emit, fire, nxt, step):
        m.submodules.arbiter = arbiter = RoundRobin(self.queues)
        m.d.comb += [arbiter.requests.eq(nonempty), grant.eq(arbiter.valid),
                     grant_q.eq(arbiter.grant), arbiter.advance.eq(emit)]

    def _wrr(self, m, nonempty, counts, grant, grant_q, rotate, join, emit, fire, nxt, step):
        n, weights = self.queues, self.weights
        top = max(weights)
        rnd = Signal(range(1, top + 1), init=1)  # the round
        start = Signal(range(n + 1))  # the first queue the round may still grant
        rest = Signal(n)  # held queues the rest of this round may grant
        later = Signal(n)  # held queues round ``rnd + 1`` may grant
        m.d.comb += [rest.eq(nonempty & Cat((rnd <= weights[q]) & (start <= q)
                                            for q in range(n))),
                     later.eq(nonempty & Cat(rnd < weights[q] for q in range(n)))]
        first_rest, any_rest = first_set(m, rest, "wrr_rest")
        first_later, any_later = first_set(m, later, "wrr_later")
        first_any, any_ = first_set(m, nonempty, "wrr_any")
        new_rnd = Signal.like(rnd)
        with m.If(any_rest):
            m.d.comb += [grant_q.eq(first_rest), new_rnd.eq(rnd)]
        with m.Elif(any_later):
            m.d.comb += [grant_q.eq(first_later), new_rnd.eq(rnd + 1)]
        with m.Else():
            m.d.comb += [grant_q.eq(first_any), new_rnd.eq(1)]
        m.d.comb += grant.eq(any_)
        with m.If(emit):
            m.d.sync += [rnd.eq(new_rnd), start.eq(grant_q + 1)]

    def _drr(self, m, nonempty, counts, grant, grant_q, rotate, join, emit, fire, nxt, step):
        n, depth = self.queues, self.depth
        a_len, a_q = nxt[32:48], nxt[48:56]
        quantum = Array(Const(q, _DEFICIT_BITS) for q in self.quanta)

        # Each queue's packets' lengths, in its slots of the memory.
        pbits = (depth - 1).bit_length()
        qbits = max((n - 1).bit_length(), 1)
        m.submodules.lengths = lengths = Memory(shape=16, depth=n << pbits, init=[])
        wp = lengths.write_port()
        rp = lengths.read_port(transparent_for=())
        head = [Signal(pbits, name=f"head{q}") for q in range(n)]
        tail = [Signal(pbits, name=f"tail{q}") for q in range(n)]
        heads, tails = Array(head), Array(tail)

        def after(p):
            if depth == 1 << pbits:
                return (p + 1)[:pbits]
            return Mux(p == depth - 1, 0, p + 1)[:pbits]

        def address(ptr, q):
            return Cat(ptr, q.as_unsigned()[:qbits])

        # The active list: the head queue and its deficit, the rest in a ring.
        hvalid = Signal()
        hq = Signal(range(max(n, 2)))
        hdef = Signal(_DEFICIT_BITS)
        slots = max(n - 1, 1)
        ring_q = [Signal(range(max(n, 2)), name=f"ring_q{s}") for s in range(slots)]
        ring_d = [Signal(_DEFICIT_BITS, name=f"ring_d{s}") for s in range(slots)]
        rd = Signal(range(slots))
        wr = Signal(range(slots))
        fcount = Signal(range(slots + 1))
        front_q, front_d = Array(ring_q)[rd], Array(ring_d)[rd]
        push, push_q, push_d, pop = Signal(), Signal.like(hq), Signal(_DEFICIT_BITS), Signal()

        # The head packet's length: read in the cycle before, or, for the packet of an arrival
        # to an empty list, passed round the memory.
        fresh = Signal()
        fresh_len = Signal(16)
        hlen = Signal(16)
        m.d.comb += hlen.eq(Mux(fresh, fresh_len, rp.data))
        m.d.sync += [fresh.eq(join & ~hvalid), fresh_len.eq(a_len)]

        fits = hlen <= hdef
        emptying = counts[hq] == 1
        m.d.comb += [grant.eq(hvalid & fits), grant_q.eq(hq), rotate.eq(hvalid & ~fits)]

        # An arrival: its length at its queue's tail, and the queue into the list if empty.
        m.d.comb += [wp.addr.eq(address(tails[a_q], a_q)), wp.data.eq(a_len), wp.en.eq(join)]
        with m.If(join):
            m.d.sync += tails[a_q].eq(after(tails[a_q]))
            with m.If(counts[a_q] == 0):
                with m.If(hvalid):
                    m.d.comb += [push.eq(1), push_q.eq(a_q), push_d.eq(quantum[a_q])]
                with m.Else():
                    m.d.sync += [hvalid.eq(1), hq.eq(a_q), hdef.eq(quantum[a_q])]

        # A step: a grant takes the length from the deficit (and the queue leaves the list if
        # it empties); a rotation adds the quantum and moves the queue to the tail.
        with m.If(emit):
            m.d.sync += heads[hq].eq(after(heads[hq]))
            with m.If(emptying):
                with m.If(fcount != 0):
                    m.d.comb += pop.eq(1)
                with m.Else():
                    m.d.sync += hvalid.eq(0)
            with m.Else():
                m.d.sync += hdef.eq(hdef - hlen)
        with m.Elif(fire):
            rotated = (hdef + quantum[hq])[:_DEFICIT_BITS]
            with m.If(fcount != 0):
                m.d.comb += [push.eq(1), push_q.eq(hq), push_d.eq(rotated), pop.eq(1)]
            with m.Else():
                m.d.sync += hdef.eq(rotated)
        with m.If(pop):
            m.d.sync += [hq.eq(front_q), hdef.eq(front_d),
                         rd.eq(Mux(rd == slots - 1, 0, rd + 1))]
        with m.If(push):
            m.d.sync += [Array(ring_q)[wr].eq(push_q), Array(ring_d)[wr].eq(push_d),
                         wr.eq(Mux(wr == slots - 1, 0, wr + 1))]
        m.d.sync += fcount.eq(fcount + push - pop)

        # The head packet's address after this cycle, for the read port.
        with m.If(pop):
            m.d.comb += rp.addr.eq(address(heads[front_q], front_q))
        with m.Elif(emit):
            m.d.comb += rp.addr.eq(address(after(heads[hq]), hq))
        with m.Else():
            m.d.comb += rp.addr.eq(address(heads[hq], hq))


def scheduler(queues: int = 4, policy: str = "rr", weights: str = "1", quanta: str = "1500",
              depth: int = 8, width: int = 8) -> Scheduler:
    """The scheduler a device is built with, from the kernel's parameters as the registry
    gives them: ``weights`` and ``quanta`` as text, one number for every queue or one a queue
    (``"1500"``, ``"100,300"``)."""
    def numbers(text) -> tuple[int, ...]:
        values = tuple(int(v) for v in str(text).split(","))
        return values * queues if len(values) == 1 else values

    return Scheduler(queues, policy, numbers(weights), numbers(quanta), depth, width)
