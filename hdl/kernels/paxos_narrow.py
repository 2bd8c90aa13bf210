"""The Paxos acceptor and learner in little logic: a byte a beat, the per-instance table in
single-port RAM of 16-bit words (the iCE40 UltraPlus's SPRAM), one value register.

They answer every request as :mod:`hdl.kernels.paxos`' ``PaxosAcceptor`` and ``PaxosLearner``
do, byte for byte (the same rules, the same messages refused, the same ``error``), but hold
neither a whole message nor a whole answer: only the header fields the decision needs (type,
acceptor, instance, round) and one register of the value's width. A message is handled in
phases, one after the other: its bytes are taken (the value shifted into the register), its
instance's row is read a word a cycle, the decision is taken, the row's changed words are
written back, and the answer goes out a byte a beat, its 16 header bytes picked from the
fields, its value shifted out of the register (a 1B's value, and a DELIVER's value held from an
earlier vote, are first read from the table into it). About 120 cycles a message. Nothing is
read or written for a message before it is whole, so a request that ends inside a message
leaves the table as if that message never came.

A row is 32 words at ``Cat(word, instance)``:

* acceptor: words 0-1 the promised round, 2-3 the round last voted in, 4-19 the value voted for
  (``value_bytes / 2`` words);
* learner: words 0-1 the round whose votes are counted, 2 the votes (a bit per acceptor) and,
  in bit 8, whether the instance is delivered, 4-19 the value of that round.

After a reset words 0-3 of every row are cleared, a word a cycle (``4 * instances`` cycles),
before the first message is taken. The value words are not: an acceptor that never voted
(voted round 0) answers a 1B with a zero value without reading them, and a learner reads them
only in the round its count has (at least one vote, whose value was written with it).

The table is one memory with a single address, read and written in different cycles. On an
iCE40 UltraPlus platform it is built from ``SB_SPRAM256KA`` cells (16K words each; 512 rows
each, so 2,048 rows in the UP5K's four): Yosys only infers SPRAM with ``synth_ice40 -spram``,
and even then not from an Amaranth ``Memory``, which always carries an initial value (zeros)
that SPRAM cannot have. Elsewhere (simulation, the formal check, other FPGAs) it is an
Amaranth ``Memory`` with one read and one write port on the same address.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Elaboratable, Instance, Module, Mux, Signal
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

__all__ = ["NarrowAcceptor", "NarrowLearner"]

#: Words of a row (the low address bits), and where a row's value starts.
ROW_WORDS = 32
VALUE_WORD = 4
#: Words of a row cleared after a reset.
CLEARED_WORDS = 4
#: Words of one SPRAM cell.
SPRAM_WORDS = 16 * 1024
#: SPRAM cells of the largest iCE40 UltraPlus.
SPRAM_CELLS = 4


def _spram_platform(platform) -> bool:
    device = getattr(platform, "device", None)
    return isinstance(device, str) and device.startswith("iCE40UP")


class WordTable(Elaboratable):
    """``depth`` words of 16 bits behind one address: ``re`` reads the word at ``addr`` into
    ``rdata`` (the next cycle; it holds until the next read), ``we`` writes ``wdata`` there.
    Never both in one cycle. SPRAM cells if ``spram`` (by default: on an iCE40 UltraPlus
    platform, for up to four cells' words), an Amaranth ``Memory`` otherwise (see the module
    doc)."""

    def __init__(self, depth: int, spram: bool | None = None):
        if spram and depth > SPRAM_CELLS * SPRAM_WORDS:
            raise ValueError(f"{depth} words need more than {SPRAM_CELLS} SPRAM cells")
        self.depth, self.spram = depth, spram
        self.addr = Signal(range(depth))
        self.wdata = Signal(16)
        self.we = Signal()
        self.re = Signal()
        self.rdata = Signal(16)

    def spram_cell(self, m: Module, name: str, *, address, data_in, write, select, data_out):
        """One SPRAM cell of 16K words, submodule ``name`` of ``m``: ``select`` (chip select)
        high reads the word at ``address`` into ``data_out`` the next cycle, or writes
        ``data_in`` there with ``write``; ``data_out`` holds otherwise."""
        m.submodules[name] = Instance(
            "SB_SPRAM256KA",
            i_ADDRESS=address, i_DATAIN=data_in, i_MASKWREN=Const(0b1111, 4), i_WREN=write,
            i_CHIPSELECT=select, i_CLOCK=ClockSignal(), i_STANDBY=Const(0), i_SLEEP=Const(0),
            i_POWEROFF=Const(1), o_DATAOUT=data_out)

    def elaborate(self, platform):
        m = Module()
        spram = self.spram
        if spram is None:
            spram = _spram_platform(platform) and self.depth <= SPRAM_CELLS * SPRAM_WORDS
        if spram:
            cells = -(-self.depth // SPRAM_WORDS)
            addr = Signal(14 + max(0, (cells - 1).bit_length()))
            m.d.comb += addr.eq(self.addr)
            bank = addr[14:]
            read_bank = Signal.like(bank)  # the cell the last read was of
            with m.If(self.re):
                m.d.sync += read_bank.eq(bank)
            data = None
            for k in range(cells):
                here = (bank == k) if cells > 1 else Const(1)
                out = Signal(16, name=f"spram{k}_out")
                self.spram_cell(m, f"spram{k}", address=addr[:14], data_in=self.wdata,
                                write=self.we & here, select=(self.we | self.re) & here,
                                data_out=out)
                data = out if data is None else Mux(read_bank == k, out, data)
            m.d.comb += self.rdata.eq(data)
        else:
            m.submodules.memory = memory = Memory(shape=16, depth=self.depth, init=[])
            wp = memory.write_port()
            rp = memory.read_port(transparent_for=())
            m.d.comb += [wp.addr.eq(self.addr), rp.addr.eq(self.addr), wp.data.eq(self.wdata),
                         wp.en.eq(self.we), rp.en.eq(self.re), self.rdata.eq(rp.data)]
        return m


class _NarrowTable(wiring.Component):
    """What the narrow acceptor and learner share: a message taken a byte a beat, the row's
    words read and written through :class:`WordTable`, the answer sent a byte a beat (see the
    module doc). A role adds its steps between the message and its answer (:meth:`steps`)."""

    operations = ("handle",)
    role = "role"

    def __init__(self, instances: int, value_bytes: int, width: int):
        if width != 1:
            self._refuse(f"A narrow {self.role} takes 1 byte a beat, not {width!r}")
        if instances < 1:
            self._refuse(f"A {self.role} needs at least one instance, not {instances!r}")
        if value_bytes < 2 or value_bytes % 2 or VALUE_WORD + value_bytes // 2 > ROW_WORDS:
            self._refuse(f"A narrow {self.role}'s value is an even number of bytes from 2 to "
                         f"{2 * (ROW_WORDS - VALUE_WORD)}, not {value_bytes!r}")
        self.instances, self.value_bytes, self.width = instances, value_bytes, width
        self.message_bytes = HEADER_BYTES + value_bytes
        self.value_words = value_bytes // 2
        # After a reset the table is cleared first; then a message's last byte, the steps
        # between it and the answer (at most an acceptor's 1A: its check, two words read, the
        # decision, two written, two read, their check and the value read, ``value_words +
        # 12`` cycles; 4 more to spare), and the answer's bytes and its end, each waiting up to
        # ``fairness`` (2) cycles for ``o_stream.ready``.
        clear = CLEARED_WORDS * instances
        steps = self.value_words + 16
        latency = clear + steps + 2 * (self.message_bytes + 1) + 2
        self.contract_bounds = {"latency": latency, "depth": latency + 4}
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def _refuse(self, message: str):
        self._MustUse__silence = True  # a component that failed to construct is not unused
        raise ValueError(message)

    def word_table(self, depth: int) -> WordTable:
        """The table's memory (see :class:`WordTable`)."""
        return WordTable(depth)

    def refuse(self, kind):
        """Whether the role cannot take a message of type ``kind``."""
        raise NotImplementedError

    def steps(self, m, f) -> None:
        """The role's FSM states from ``START`` (the row at ``f.word == 0``; the message's
        fields in ``f``) to ``SEND`` (the answer, its header fields set) or to
        ``f.next_message()`` (no answer)."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        size, vw = self.message_bytes, self.value_words
        i, o = self.i_stream, self.o_stream
        ibits = max(1, (self.instances - 1).bit_length())

        m.submodules.table = table = self.word_table(self.instances * ROW_WORDS)
        f = _Fields()
        f.m, f.table = m, table
        f.word = word = Signal(5)
        f.inst = inst = Signal(ibits)
        m.d.comb += table.addr.eq(Cat(word, inst))
        f.rvalid = rvalid = Signal()  # table.rdata holds the word read in the last cycle
        m.d.sync += rvalid.eq(table.re)

        # The message's fields, taken as its bytes go by.
        f.kind = kind = Signal(8)
        f.acceptor = acceptor = Signal(3)
        acceptor_bad = Signal()  # an acceptor id of 8 or more
        inst_bad = Signal()  # an instance too large for ``inst``
        f.round = rnd = Signal(32)
        f.value = value = Signal(8 * self.value_bytes)
        got = Signal(range(size + 1))  # bytes of the message taken

        # The answer: its header's fields besides the instance, a word of the table's (a
        # promised or voted round), and whether its value is zero.
        f.answer = answer = Signal(8)
        f.other = other = Signal(32)
        f.zero = zero = Signal()
        sent = Signal(range(size + 1))  # bytes of the answer sent
        who = Cat(acceptor, Const(0, 5)) if self.role == "acceptor" else Const(0, 8)
        header = Cat(answer, who, Const(0, 16), inst, Const(0, 32 - ibits), rnd, other)

        final = Signal()  # the request's last beat is taken
        bad = Signal()

        def next_message():
            m.d.sync += [got.eq(0), sent.eq(0)]
            m.next = "IN"

        f.next_message = next_message

        def fail():
            m.d.sync += bad.eq(1)
            m.next = "DRAIN"

        def shift16(data):
            m.d.sync += value.eq(Cat(value[16:], data))

        f.shift16 = shift16

        def read(first_after, sink, then):
            """Read the words from ``word`` up to ``first_after``, each into ``sink(data)``
            the cycle after, then ``then()``."""
            more = word != first_after
            m.d.comb += table.re.eq(more)
            with m.If(more):
                m.d.sync += word.eq(word + 1)
            with m.If(rvalid):
                sink(table.rdata)
                with m.If(~more):
                    then()

        def write(first_after, data, then):
            """Write ``data`` (a function of ``word``) at the words from ``word`` up to
            ``first_after``, the value's words from the value register (rotated as they go),
            then ``then()``."""
            m.d.comb += [table.we.eq(1), table.wdata.eq(data)]
            m.d.sync += word.eq(word + 1)
            with m.If(word >= VALUE_WORD):
                m.d.comb += table.wdata.eq(value[:16])
                shift16(value[:16])
            with m.If(word == first_after - 1):
                then()

        def goto(state):
            def go():
                m.next = state
            return go

        f.read, f.write, f.goto = read, write, goto
        f.value_end = VALUE_WORD + vw

        beat = i.valid & i.ready
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)

        with m.FSM(init="CLEAR"):
            with m.State("CLEAR"):  # words 0-3 of each row
                m.d.comb += [table.we.eq(1), table.wdata.eq(0)]
                m.d.sync += word.eq(word + 1)
                with m.If(word == CLEARED_WORDS - 1):
                    m.d.sync += [word.eq(0), inst.eq(inst + 1)]
                    with m.If(inst == self.instances - 1):
                        next_message()

            with m.State("IN"):
                m.d.comb += i.ready.eq(~final & (got != size))
                data = i.payload.data[:8]
                with m.If(got == size):  # a whole message: is it one the role takes?
                    with m.If(self.refuse(kind) | inst_bad | (inst >= self.instances) |
                              (rnd == 0) | acceptor_bad):
                        fail()
                    with m.Else():
                        m.d.sync += [word.eq(0), zero.eq(0)]
                        m.next = "START"
                with m.Elif(beat & (i.payload.op != 0)):
                    fail()  # an operation the role does not have
                with m.Elif(beat & (i.payload.nbytes == 1)):
                    m.d.sync += got.eq(got + 1)
                    with m.Switch(got):
                        with m.Case(0):
                            m.d.sync += kind.eq(data)
                        with m.Case(1):
                            m.d.sync += [acceptor.eq(data[:3]), acceptor_bad.eq(data[3:] != 0)]
                        for k in range(4):
                            low = 8 * k
                            n = max(0, min(8, ibits - low))
                            with m.Case(4 + k):
                                if n:
                                    m.d.sync += inst[low:low + n].eq(data[:n])
                                high = data[n:] != 0 if n < 8 else Const(0)
                                m.d.sync += inst_bad.eq(high if k == 0 else inst_bad | high)
                        with m.Case(8, 9, 10, 11):
                            m.d.sync += rnd.eq(Cat(rnd[8:], data))
                        with m.Default():
                            with m.If(got >= HEADER_BYTES):
                                m.d.sync += value.eq(Cat(value[8:], data))
                with m.Elif(final):
                    with m.If(got == 0):
                        m.next = "END"
                    with m.Else():
                        fail()  # the request ends inside a message

            self.steps(m, f)

            with m.State("SEND"):
                m.d.comb += [o.valid.eq(1), o.payload.nbytes.eq(1)]
                with m.If(sent < HEADER_BYTES):
                    m.d.comb += o.payload.data.eq(header.word_select(sent[:4], 8))
                with m.Elif(~zero):
                    m.d.comb += o.payload.data.eq(value[:8])
                with m.If(o.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent >= HEADER_BYTES):
                        m.d.sync += value.eq(Cat(value[8:], value[:8]))
                    with m.If(sent == size - 1):
                        next_message()

            with m.State("DRAIN"):  # drop the rest of a bad request
                m.d.comb += i.ready.eq(~final)
                with m.If(final):
                    m.next = "END"

            with m.State("END"):
                m.d.comb += [o.valid.eq(1), o.payload.last.eq(1), o.payload.error.eq(bad)]
                with m.If(o.ready):
                    m.d.sync += [final.eq(0), bad.eq(0)]
                    next_message()

        return m


class _Fields:
    """What :meth:`_NarrowTable.steps` works with: the message's fields, the answer's, the
    table's address and helpers (set by :meth:`_NarrowTable.elaborate`)."""


class NarrowAcceptor(_NarrowTable):
    """A Paxos acceptor for ``instances`` log positions that answers as
    :class:`~hdl.kernels.paxos.PaxosAcceptor` does, in little logic (see the module doc).

    Parameters
    ----------
    instances : int
        Rows of the state table (2,048 fill the four SPRAM cells of an iCE40 UP5K).
    value_bytes : int
        Size of a value, even, 2 to 56; a message is ``16 + value_bytes`` bytes.
    width : int
        Bytes a beat: 1.

    Members
    -------
    i_stream : ``In(request_stream(width))``
    o_stream : ``Out(byte_stream(width))``
    """

    role = "acceptor"

    def __init__(self, instances: int = 256, value_bytes: int = 32, width: int = 1):
        super().__init__(instances, value_bytes, width)

    def refuse(self, kind):
        return (kind != PREPARE) & (kind != ACCEPT)

    def steps(self, m, f):
        rnd, other, word = f.round, f.other, f.word

        def into_other(data):
            m.d.sync += other.eq(Cat(other[16:], data))

        def rounds():  # words 0-3: the round, twice
            return Mux(word[0], rnd[16:], rnd[:16])

        with m.State("START"):  # the promised round
            f.read(2, into_other, f.goto("DECIDE"))

        with m.State("DECIDE"):
            with m.If(rnd < other):
                m.d.sync += [f.answer.eq(NACK), rnd.eq(other), other.eq(0), f.zero.eq(1)]
                m.next = "SEND"
            with m.Elif(f.kind == PREPARE):
                m.d.sync += [f.answer.eq(PROMISE), word.eq(0)]
                m.next = "PROMISE"
            with m.Else():
                m.d.sync += [f.answer.eq(ACCEPTED), word.eq(0), other.eq(0)]
                m.next = "VOTE"

        with m.State("PROMISE"):  # the promised round, then the voted round and the value
            f.write(2, rounds(), f.goto("VOTED"))

        with m.State("VOTED"):
            f.read(4, into_other, f.goto("HELD"))

        with m.State("HELD"):
            with m.If(other == 0):  # never voted: no value
                m.d.sync += f.zero.eq(1)
                m.next = "SEND"
            with m.Else():
                m.next = "VALUE"

        with m.State("VALUE"):
            f.read(f.value_end, f.shift16, f.goto("SEND"))

        with m.State("VOTE"):  # the promised and voted rounds, and the value
            f.write(f.value_end, rounds(), f.goto("SEND"))


class NarrowLearner(_NarrowTable):
    """A Paxos learner for ``instances`` log positions and a ``quorum`` of acceptors that
    answers as :class:`~hdl.kernels.paxos.PaxosLearner` does, in little logic (see the module
    doc).

    Parameters
    ----------
    instances : int
        Rows of the state table.
    quorum : int
        Votes of one round that decide an instance, 1 to 8.
    value_bytes : int
        Size of a value, even, 2 to 56.
    width : int
        Bytes a beat: 1.
    """

    role = "learner"

    def __init__(self, instances: int = 256, quorum: int = 2, value_bytes: int = 32,
                 width: int = 1):
        if not 1 <= quorum <= MAX_ACCEPTORS:
            self._refuse(f"A quorum is 1 to {MAX_ACCEPTORS}, not {quorum!r}")
        self.quorum = quorum
        super().__init__(instances, value_bytes, width)

    def refuse(self, kind):
        return kind != ACCEPTED

    def steps(self, m, f):
        rnd, counted, word = f.round, f.other, f.word
        votes = Signal(9)  # a bit per acceptor, and in bit 8 whether delivered

        def sink(data):
            with m.If(word == 3):
                m.d.sync += votes.eq(data[:9])
            with m.Else():
                m.d.sync += counted.eq(Cat(counted[16:], data))

        with m.State("START"):  # the counted round and the votes
            f.read(3, sink, f.goto("DECIDE"))

        with m.State("DECIDE"):
            bit = Signal(8)
            m.d.comb += bit.eq(1 << f.acceptor)
            now = Signal(8)
            m.d.comb += now.eq(Mux(rnd > counted, bit, votes[:8] | bit))
            done = sum(now[k] for k in range(8)) >= self.quorum
            with m.If(votes[8] | (rnd < counted)):
                f.next_message()  # delivered, or an old round: nothing changes
            with m.Else():
                m.d.sync += [votes.eq(Cat(now, done)), f.answer.eq(DELIVER), counted.eq(0)]
                with m.If(rnd > counted):  # a new round: its value with it
                    m.d.sync += word.eq(0)
                    m.next = "COUNT"
                with m.Else():
                    m.d.sync += word.eq(2)
                    m.next = "VOTES"

        def answer_if_done(held):
            with m.If(votes[8]):
                if held:
                    m.d.sync += word.eq(VALUE_WORD)
                    m.next = "VALUE"
                else:
                    m.next = "SEND"
            with m.Else():
                f.next_message()

        with m.State("COUNT"):  # the round, the votes, the value
            data = Mux(word[1], Mux(word[0], 0, votes), Mux(word[0], rnd[16:], rnd[:16]))
            f.write(f.value_end, data, lambda: answer_if_done(False))

        with m.State("VOTES"):
            f.write(3, votes, lambda: answer_if_done(True))

        with m.State("VALUE"):  # the value held from the round's first vote
            f.read(f.value_end, f.shift16, f.goto("SEND"))
