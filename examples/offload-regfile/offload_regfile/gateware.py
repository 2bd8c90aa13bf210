"""The register file in gateware: ``slots`` 32-bit registers behind a byte stream.

Requests come one byte a beat on ``i_stream``; the operation is the ``op`` of a message's first
beat (0 ``write``, 1 ``read``, see :mod:`offload_regfile`). The kernel is a short pipeline:

input
    gathers a record's bytes. When its last byte is taken, or the message ends, it issues an
    *item* (a whole record, and/or the end of the message) to the pipeline.
access (one cycle)
    reads the register (the read port is not transparent, so a write in the same cycle is seen
    only by later records) and, for a write record whose index exists, writes the new value.
queue
    the old value arrives a cycle later and the item's answer enters a small response queue.
output
    a shift register sends each answer's six bytes, one a cycle; an item that ends the message
    marks the last of them ``last`` (and ``error`` if the message was malformed), or, when the
    message ended without completing a record, is sent as an empty beat with ``last``.

The input holds one credit per queue slot, taken when it issues an item and given back when
the item's answer leaves the queue, so the queue never overflows and the pipeline never
stalls. Two slots keep a stream of writes at a byte a cycle in and out; reads answer three
bytes per byte asked, so their input waits on the output.

Registers live in a :class:`~amaranth.lib.memory.Memory` (block RAM on an FPGA), which a reset
does not clear. After a reset (power-on, or the bridge's OP_RESET through its
``ResetInserter``) the kernel writes 0 to every register, one a cycle, with ``i_stream.ready``
low meanwhile.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from hdl.queue import RegisterQueue, count_up_down
from hdl.stream import byte_stream, request_stream

from . import ANSWER, RECORD, RESPONSE_QUEUE, SPEC

__all__ = ["RegfileKernel"]

_SLOTS = SPEC.params["slots"]
_WRITE, _READ = (SPEC.operations.index(SPEC.operation(name)) for name in ("write", "read"))


class RegfileKernel(wiring.Component):
    """``slots`` 32-bit registers, written and read by streams of records.

    A message of operation ``write`` is records of ``index`` (u16 LE) and ``value`` (u32 LE);
    one of ``read``, records of ``index``. Each whole record is answered with ``index`` and the
    register's value before the record (0 for an index of ``slots`` or more, which writes
    nothing). The response ends with ``error`` set if some index was out of range, the message
    ended inside a record (the partial record is not answered) or the opcode is neither; an
    empty message, or one with no whole record, is answered with one empty beat.

    Parameters
    ----------
    slots : int
        Registers, 1 to 4096.

    Members
    -------
    i_stream : ``In(request_stream(1))``
        Requests, a byte a beat.
    o_stream : ``Out(byte_stream(1))``
        One response per request message.
    """

    operations = tuple(op.name for op in SPEC.operations)
    width = 1

    #: Cycles from the last byte of a record being taken to the first byte of its answer being
    #: offered, when the output is free.
    LATENCY = 4

    def __init__(self, slots: int = _SLOTS.default):
        # An object whose construction failed was never meant to be used: no warning for it.
        self._MustUse__silence = True
        if not isinstance(slots, int) or isinstance(slots, bool):
            raise TypeError(f"RegfileKernel slots must be an integer, not {slots!r}")
        if not _SLOTS.low <= slots <= _SLOTS.high:
            raise ValueError(f"RegfileKernel slots must be from {_SLOTS.low} to {_SLOTS.high}, "
                             f"not {slots}")
        self.slots = slots
        self._MustUse__silence = False
        super().__init__({
            "i_stream": In(request_stream(self.width)),
            "o_stream": Out(byte_stream(self.width)),
        })

    def elaborate(self, platform):
        m = Module()
        slots = self.slots
        i, o = self.i_stream, self.o_stream

        m.submodules.registers = registers = Memory(shape=32, depth=slots, init=[])
        wr = registers.write_port()
        rd = registers.read_port(transparent_for=())

        # ---- Clearing after reset ---------------------------------------------------------
        clearing = Signal(init=1)
        clear_addr = Signal(range(slots))

        # ---- Input: gather records ---------------------------------------------------------
        m.submodules.queue = queue = RegisterQueue(16 + 32 + 3, RESPONSE_QUEUE)
        credits = Signal(range(RESPONSE_QUEUE + 1), init=RESPONSE_QUEUE)
        issue = Signal()  # an item goes to the pipeline this cycle
        load = Signal()  # an answer leaves the queue this cycle
        m.d.comb += i.ready.eq(count_up_down(m, credits, load, issue) & ~clearing)

        in_message = Signal()  # a message's first beat has been taken, its last not yet
        op = Signal(8)
        pos = Signal(range(max(RECORD.values())))  # bytes of the current record taken
        record = Signal(8 * max(RECORD.values()), reset_less=True)

        accept = i.valid & i.ready
        this_op = Mux(in_message, op, i.payload.op)
        is_write = this_op == _WRITE
        known = is_write | (this_op == _READ)
        # An unknown opcode gathers write-sized records that are never complete: its message is
        # answered with one empty, flagged beat.
        final_pos = Mux(is_write | ~known, RECORD["write"] - 1, RECORD["read"] - 1)
        has_byte = ~i.payload.last | (i.payload.nbytes != 0)
        complete = has_byte & known & (pos == final_pos)
        next_pos = Mux(has_byte, Mux(pos == final_pos, 0, pos + 1), pos)
        gathered = Signal.like(record)
        m.d.comb += gathered.eq(record)
        with m.If(has_byte):
            with m.Switch(pos):
                for k in range(len(record) // 8):
                    with m.Case(k):
                        m.d.comb += gathered[8 * k:8 * (k + 1)].eq(i.payload.data)
        m.d.comb += issue.eq(accept & (complete | i.payload.last))
        with m.If(accept):
            m.d.sync += [
                record.eq(gathered),
                pos.eq(Mux(i.payload.last, 0, next_pos)),
                in_message.eq(~i.payload.last),
                op.eq(this_op),
            ]

        # ---- Access: read the old value, write the new one ---------------------------------
        v1 = Signal()
        index1 = Signal(16, reset_less=True)
        value1 = Signal(32, reset_less=True)
        write1, answer1, last1, bad1 = (Signal(reset_less=True, name=n)
                                        for n in ("write1", "answer1", "last1", "bad1"))
        m.d.sync += v1.eq(issue)
        with m.If(issue):
            m.d.sync += [
                index1.eq(gathered[:16]),
                value1.eq(gathered[16:48]),
                write1.eq(complete & is_write),
                answer1.eq(complete),
                last1.eq(i.payload.last),
                # The message ends inside a record, or has an opcode the kernel does not have.
                bad1.eq(i.payload.last & ((next_pos != 0) | ~known)),
            ]

        exists1 = index1 < slots
        m.d.comb += [rd.addr.eq(index1), rd.en.eq(v1)]
        with m.If(clearing):
            m.d.comb += [wr.addr.eq(clear_addr), wr.data.eq(0), wr.en.eq(1)]
            m.d.sync += clear_addr.eq(clear_addr + 1)
            with m.If(clear_addr == slots - 1):
                m.d.sync += clearing.eq(0)
        with m.Else():
            m.d.comb += [wr.addr.eq(index1), wr.data.eq(value1),
                         wr.en.eq(v1 & write1 & exists1)]

        # Whether the message so far has had a record out of range.
        flagged = Signal()
        error1 = flagged | bad1 | (answer1 & ~exists1)
        with m.If(v1):
            m.d.sync += flagged.eq(error1 & ~last1)

        # ---- Queue: the answer, once the old value has been read ---------------------------
        v2 = Signal()
        index2 = Signal(16, reset_less=True)
        exists2, answer2, last2, error2 = (Signal(reset_less=True, name=n)
                                           for n in ("exists2", "answer2", "last2", "error2"))
        m.d.sync += v2.eq(v1)
        with m.If(v1):
            m.d.sync += [index2.eq(index1), exists2.eq(exists1), answer2.eq(answer1),
                         last2.eq(last1), error2.eq(error1 & last1)]
        m.d.comb += [
            queue.w_en.eq(v2),
            queue.w_data.eq(Cat(index2, Mux(exists2, rd.data, 0), answer2, last2, error2)),
        ]

        # ---- Output: six bytes an answer, or one empty beat --------------------------------
        s_valid = Signal()
        s_data = Signal(8 * ANSWER, reset_less=True)
        s_left = Signal(range(ANSWER), reset_less=True)  # bytes after the one offered
        s_answer, s_last, s_error = (Signal(reset_less=True, name=n)
                                     for n in ("s_answer", "s_last", "s_error"))
        final = s_left == 0
        m.d.comb += [
            load.eq(queue.r_rdy & (~s_valid | (o.ready & final))),
            queue.r_en.eq(load),
            o.valid.eq(s_valid),
            o.payload.data.eq(s_data[:8]),
            o.payload.nbytes.eq(s_answer),
            o.payload.last.eq(s_last & final),
            o.payload.error.eq(s_error & final),
        ]
        with m.If(load):
            m.d.sync += [
                s_valid.eq(1),
                s_data.eq(queue.r_data[:48]),
                s_answer.eq(queue.r_data[48]),
                s_left.eq(Mux(queue.r_data[48], ANSWER - 1, 0)),
                s_last.eq(queue.r_data[49]),
                s_error.eq(queue.r_data[50]),
            ]
        with m.Elif(s_valid & o.ready):
            m.d.sync += [s_data.eq(s_data >> 8), s_left.eq(s_left - 1)]
            with m.If(final):
                m.d.sync += s_valid.eq(0)

        return m
