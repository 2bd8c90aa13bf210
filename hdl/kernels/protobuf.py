"""Protobuf messages of one schema, encoded and decoded in gateware from its field table.

The kernel is built for one proto3 message type, flattened into a
:class:`~hdl.kernels.protobuf_table.Table` (its records are described there). It has two
operations:

``encode`` (opcode 0)
    Request: records, ``record_size`` bytes each, concatenated. Response: for each record, its
    message as a length-delimited message (the varint of the message's length, then the
    message), byte for byte what the ``protobuf`` package's ``SerializeToString()`` gives for
    the same values: fields in field-number order, proto3 defaults (a scalar whose record bytes
    are all zero, an empty string, a repeated field with ``count`` 0, a message whose
    ``present`` byte is 0) left out, repeated scalars packed.
``decode`` (opcode 1)
    Request: length-delimited messages, concatenated. Response: a record per message: fields
    in any order, the last value of a scalar field sent more than once, a message field sent
    more than once merged (as ``ParseFromString``), repeated scalars packed or not (and
    appended across occurrences), unknown fields of every wire type skipped.

Malformed input
---------------
A request is answered with the results of every good record or message before the first bad
one, then the end of the response with ``error``; the rest of the request is dropped. Which
record or message is bad is the same on every path (the host names what was wrong from the
request, ``offload.kernels.protobuf``):

encode, a record whose encoded fields (those all of whose enclosing messages are present) have
    * a string or bytes ``len`` over ``max_bytes``;
    * a string whose ``data[:len]`` is not valid UTF-8 (RFC 3629: no overlong forms, no
      surrogates, nothing above U+10FFFF);
    * a repeated field's ``count`` over ``max_repeat``;
    or the request ends inside a record (its length is not a whole number of records).
decode, a message
    * whose length prefix or body the request ends inside ("cut short"), or whose length is
      over ``MAX_MESSAGE``;
    * with a varint (a tag, a length, a value, a skipped unknown one) over 10 bytes or whose
      10th byte is above 0x01, or a tag or a field's length over 5 bytes (upb refuses those,
      even padded with 0x80 bytes);
    * with a tag whose field number is 0 or above 2**29 - 1 (a tag of 2**32 or more);
    * with a tag of wire type 3 or 4 (groups) or 6 or 7;
    * with a field of the schema sent with a wire type other than its own (a repeated scalar
      may also come packed, as wire type 2);
    * with a field (its tag, its value, a length-delimited field's length) that runs past the
      end of the message it is in, a packed run that ends inside a value;
    * with a string or bytes value over ``max_bytes``, a string that is not valid UTF-8, or
      more than ``max_repeat`` values of a repeated field in the message.

An opcode the kernel does not have is answered with an empty beat with ``error``.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..stream import byte_stream, request_stream
from .protobuf_table import MAX_MESSAGE, WIRE_I64, WIRE_LEN, WIRE_VARINT, Field, Table

__all__ = ["ProtobufKernel", "max_encoded", "varint_len", "WIDTHS"]

#: Bytes a beat: 1, the byte-a-cycle engines (small enough for the iCE40 UP5K); 8, the wide
#: encoder (:mod:`hdl.kernels.protobuf_wide`), a field a cycle, 8 bytes a cycle out.
WIDTHS = (1, 8)

_ENCODE, _DECODE = 0, 1

# How a varint value is written into a record (decode) or read out of one (encode).
_RAW, _ZIGZAG32, _ZIGZAG64, _BOOL, _SIGNED32 = range(5)


def _conversion(f: Field) -> int:
    return {17: _ZIGZAG32, 18: _ZIGZAG64, 8: _BOOL, 5: _SIGNED32, 14: _SIGNED32}.get(
        f.type, _RAW)


def to_wire(m: Module, conversion, value) -> Signal:
    """A record's scalar ``value`` (64 bits, zero-extended) as the number its varint carries,
    by ``conversion`` (a signal or a constant: sign-extended int32 and enum, zigzag, bool)."""
    out = Signal(64)
    with m.Switch(conversion):
        with m.Case(_SIGNED32):
            m.d.comb += out.eq(value[:32].as_signed())
        with m.Case(_ZIGZAG32):
            m.d.comb += out.eq(Cat(0, value[:31]) ^ value[31].replicate(32))
        with m.Case(_ZIGZAG64):
            m.d.comb += out.eq(Cat(0, value[:63]) ^ value[63].replicate(64))
        with m.Case(_BOOL):
            m.d.comb += out.eq(value.any())
        with m.Default():
            m.d.comb += out.eq(value)
    return out


def enclosed_present(fields, present, k: int):
    """Whether every message field that field ``k`` is inside is present (``present``: a
    signal or value per message field's index)."""
    out, p = Const(1), fields[k].parent
    while p >= 0:
        out, p = out & present[p], fields[p].parent
    return out


def varint_len(value: int) -> int:
    """Bytes of the varint of ``value`` (0 to 2**64 - 1)."""
    return max(1, -(-value.bit_length() // 7))


def _tag(f: Field) -> int:
    wire = WIRE_LEN if (f.repeated or f.is_bytes or f.is_message) else f.wire_type
    return f.number << 3 | wire


def _max_value_len(f: Field) -> int:
    # The most bytes one value of a scalar field encodes to.
    if f.wire_type == WIRE_VARINT:
        return 1 if f.type == 8 else 5 if f.type in (13, 17) else 10
    return f.scalar_size


def max_encoded(table: Table, parent: int = -1) -> int:
    """The most bytes a message of ``table`` (or the message field at ``parent``) encodes to,
    without its own length prefix."""
    total = 0
    for i in table.children(parent):
        f = table.fields[i]
        if f.is_message:
            body = max_encoded(table, i)
        elif f.is_bytes:
            body = table.max_bytes
        elif f.repeated:
            body = table.max_repeat * _max_value_len(f)
        else:
            total += varint_len(_tag(f)) + _max_value_len(f)
            continue
        total += varint_len(_tag(f)) + varint_len(body) + body
    return total


def _utf8(m: Module, byte, start, step, name: str):
    """RFC 3629 UTF-8, a byte a cycle: returns ``(ok, complete)`` for ``byte`` given the state
    so far (``ok``: the byte may come here; ``complete``: no sequence is left open after it);
    ``start``: the byte is a string's first; ``step``: it is taken."""
    need = Signal(2, name=f"{name}_need")  # continuation bytes still due
    lo = Signal(8, name=f"{name}_lo", init=0x80)  # the range the next one must be in
    hi = Signal(8, name=f"{name}_hi", init=0xBF)
    n = Mux(start, 0, need)
    cont_ok = (byte >= Mux(start, 0x80, lo)) & (byte <= Mux(start, 0xBF, hi))
    ok = Signal(name=f"{name}_ok")
    next_need = Signal(2, name=f"{name}_next_need")
    next_lo = Signal(8, name=f"{name}_next_lo")
    next_hi = Signal(8, name=f"{name}_next_hi")
    m.d.comb += [ok.eq(1), next_need.eq(0), next_lo.eq(0x80), next_hi.eq(0xBF)]
    with m.If(n != 0):
        m.d.comb += [ok.eq(cont_ok), next_need.eq(n - 1)]
    with m.Elif(byte < 0x80):
        pass
    with m.Elif((byte >= 0xC2) & (byte <= 0xDF)):
        m.d.comb += next_need.eq(1)
    with m.Elif(byte == 0xE0):
        m.d.comb += [next_need.eq(2), next_lo.eq(0xA0)]
    with m.Elif(byte == 0xED):
        m.d.comb += [next_need.eq(2), next_hi.eq(0x9F)]
    with m.Elif((byte >= 0xE1) & (byte <= 0xEF)):
        m.d.comb += next_need.eq(2)
    with m.Elif(byte == 0xF0):
        m.d.comb += [next_need.eq(3), next_lo.eq(0x90)]
    with m.Elif((byte >= 0xF1) & (byte <= 0xF3)):
        m.d.comb += next_need.eq(3)
    with m.Elif(byte == 0xF4):
        m.d.comb += [next_need.eq(3), next_hi.eq(0x8F)]
    with m.Else():
        m.d.comb += ok.eq(0)
    with m.If(step):
        m.d.sync += [need.eq(next_need), lo.eq(next_lo), hi.eq(next_hi)]
    with m.Elif(start):
        m.d.sync += [need.eq(0), lo.eq(0x80), hi.eq(0xBF)]
    return ok, next_need == 0


def _log2(n: int) -> int:
    return n.bit_length() - 1


class _Decoder(wiring.Component):
    """Length-delimited messages in, a record per message out (see the module doc).

    A byte a cycle through one state machine: every varint (a message's length, a tag, a value,
    a field's length, an unknown varint) goes through one accumulator and then a dispatch
    cycle; a tag's field is found by comparing it with every field of the current message at
    once (the table as constant logic). Values are written into a record memory; fixed-width
    values and string bytes as they arrive, varint values after they end. When a message ends,
    its record is read out and the memory cleared in the same pass.
    """

    def __init__(self, table: Table):
        self.table = table
        super().__init__({"i_stream": In(byte_stream(1)), "o_stream": Out(byte_stream(1))})

    def elaborate(self, platform):
        m = Module()
        t, fields = self.table, self.table.fields
        size = t.record_size
        i, o = self.i_stream, self.o_stream

        m.submodules.rec = rec = Memory(shape=8, depth=max(1, size), init=[])
        wp = rec.write_port()
        rp = rec.read_port(transparent_for=())

        depth_max = t.depth
        reps = [k for k, f in enumerate(fields) if f.repeated]
        counts = [Signal(8, name=f"count{k}") for k in reps]
        count_of = Array(counts) if counts else None

        (VAR, VDONE, FIX, STR, SKIPN, WRITE, CNT, ZFILL, AFTER, POP, OUT, CLEAR, END,
         DRAIN) = range(14)
        TOPLEN, TAG, VALUE, LENGTH, SKIP = range(5)
        L_SKIP, L_STRING, L_MESSAGE, L_PACKED = range(4)

        state = Signal(range(14))
        final = Signal()  # the request's last beat has been taken
        bad = Signal()  # the message being decoded is malformed: answer error

        byte = i.payload.data
        has_byte = ~i.payload.last | i.payload.nbytes.any()
        consuming = Signal()
        m.d.comb += consuming.eq((state == VAR) | (state == FIX) | (state == STR) |
                                 (state == SKIPN) | (state == DRAIN))
        m.d.comb += i.ready.eq(consuming & ~final)
        beat = i.valid & i.ready
        take = Signal()
        m.d.comb += take.eq(beat & has_byte)
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)

        # Where the decoder is in the message: bytes taken, and where the current message (or
        # packed run) ends; a stack of the ends and the fields of the messages it is in.
        pos = Signal(25)
        lim = Signal(25)
        ends = Array(Signal(25, name=f"end{d}") for d in range(depth_max + 1))
        nodes = Array(Signal(range(len(fields) + 1), name=f"node{d}")
                      for d in range(depth_max + 1))
        depth = Signal(range(depth_max + 1))
        cur = Signal(range(len(fields) + 1))  # the message's field index + 1; 0: the top
        packed = Signal()
        rem = Signal(25)
        m.d.comb += rem.eq(lim - pos)

        # The varint accumulator.
        vmode = Signal(3)
        vval = Signal(64)
        vplace = Signal(10, init=1)

        # The field being decoded.
        f_idx = Signal(range(max(1, len(fields))))
        f_off = Signal(range(size + 2))  # its value, len, count or present byte
        f_size = Signal(4)
        f_conv = Signal(3)
        f_rep = Signal()
        f_fixed = Signal()  # a repeated field's elements are fixed-width
        f_r = Signal(range(max(1, len(reps))))
        f_cnt = Signal(8)
        f_utf8 = Signal()
        f_lmode = Signal(2)
        iaddr = Signal(range(size + t.max_repeat * 8 + 2))  # the next element's place

        # Writes into the record memory.
        waddr = Signal(range(size + t.max_bytes + 3))
        wdata = Signal(64)
        wn = Signal(4)
        wnext = Signal(range(14))
        fn = Signal(25)  # bytes of a fixed value, a string, a skipped field still to come
        zn = Signal(range(t.max_bytes + 1))  # a string's bytes to clear after it

        raddr = Signal(range(size + 1))
        ovalid = Signal()
        m.d.comb += rp.addr.eq(raddr)

        s_first = Signal()  # the next string byte is its first
        utf_ok, utf_done = _utf8(m, byte, s_first, take & (state == STR), "utf8")

        def fail():
            m.d.sync += [bad.eq(1), state.eq(DRAIN), raddr.eq(0)]

        def varint(mode):
            m.d.sync += [state.eq(VAR), vmode.eq(mode), vplace.eq(1)]

        def write(data, addr, n, then):
            m.d.sync += [state.eq(WRITE), wdata.eq(data), waddr.eq(addr), wn.eq(n),
                         wnext.eq(then)]

        def dispatch(k, f, wt):
            """The dispatch of a tag that names field ``k`` of the current message."""
            m.d.sync += [f_idx.eq(k), f_off.eq(f.offset), f_rep.eq(f.repeated),
                         f_utf8.eq(f.type == 9)]
            if f.is_message or f.is_bytes:
                with m.If(wt == WIRE_LEN):
                    m.d.sync += f_lmode.eq(L_MESSAGE if f.is_message else L_STRING)
                    varint(LENGTH)
                with m.Else():
                    fail()
                return
            n = f.scalar_size
            fixed = f.wire_type != WIRE_VARINT
            m.d.sync += [f_size.eq(n), f_conv.eq(_conversion(f)), f_fixed.eq(fixed)]
            if f.repeated:
                count = counts[reps.index(k)]
                item = f.offset + 2 + (count << _log2(n))
                m.d.sync += [f_r.eq(reps.index(k)), f_cnt.eq(count), iaddr.eq(item)]
                with m.If(wt == WIRE_LEN):
                    m.d.sync += f_lmode.eq(L_PACKED)
                    varint(LENGTH)
                with m.Elif((wt == f.wire_type) & (count == t.max_repeat)):
                    fail()
                with m.Elif(wt == f.wire_type):
                    value(fixed, n, item)
                with m.Else():
                    fail()
            else:
                with m.If(wt == f.wire_type):
                    value(fixed, n, f.offset)
                with m.Else():
                    fail()

        def value(fixed, n, addr):
            if not fixed:
                varint(VALUE)
                return
            with m.If(rem < n):
                fail()
            with m.Else():
                m.d.sync += [state.eq(FIX), fn.eq(n), waddr.eq(addr)]

        with m.Switch(state):
            with m.Case(VAR):
                with m.If(final):
                    # The request ended: between messages, that is the end of the response.
                    with m.If((vmode == TOPLEN) & vplace[0]):
                        m.d.sync += state.eq(END)
                    with m.Else():
                        m.d.sync += [bad.eq(1), state.eq(CLEAR), raddr.eq(0)]
                with m.Elif(take):
                    with m.If(vmode != TOPLEN):
                        m.d.sync += pos.eq(pos + 1)
                    for j in range(64):
                        with m.If(vplace[j // 7]):
                            m.d.sync += vval[j].eq(byte[j % 7])
                        with m.Elif(vplace[0]):
                            m.d.sync += vval[j].eq(0)
                    with m.If(vplace[9] & byte[1:].any()):
                        fail()  # over 10 bytes, or over 64 bits
                    with m.Elif(((vmode == TAG) | (vmode == LENGTH)) & vplace[4] & byte[7]):
                        fail()  # a tag or a length over 5 bytes
                    with m.Elif(byte[7]):
                        m.d.sync += vplace.eq(vplace << 1)
                        with m.If((vmode != TOPLEN) & (pos + 1 == lim)):
                            fail()  # the message (or packed run) ends inside the varint
                    with m.Else():
                        m.d.sync += state.eq(VDONE)

            with m.Case(VDONE):
                with m.Switch(vmode):
                    with m.Case(TOPLEN):
                        with m.If(vval > MAX_MESSAGE):
                            fail()
                        with m.Else():
                            m.d.sync += [pos.eq(0), lim.eq(vval), ends[0].eq(vval),
                                         depth.eq(0), cur.eq(0), packed.eq(0)]
                            m.d.sync += [c.eq(0) for c in counts]
                            with m.If(vval == 0):
                                m.d.sync += [state.eq(OUT), raddr.eq(0), ovalid.eq(0)]
                            with m.Else():
                                varint(TAG)
                    with m.Case(TAG):
                        fieldno, wt = vval[3:32], vval[:3]
                        matches = [(cur == f.parent + 1) & (fieldno == f.number)
                                   for f in fields]
                        known = Cat(*matches).any() if fields else Const(0)
                        with m.If(vval[32:].any() | (fieldno == 0) | (wt == 3) | (wt == 4) |
                                  (wt == 6) | (wt == 7)):
                            fail()
                        with m.Elif(~known):  # skip it
                            with m.Switch(wt):
                                with m.Case(WIRE_VARINT):
                                    varint(SKIP)
                                with m.Case(WIRE_LEN):
                                    m.d.sync += f_lmode.eq(L_SKIP)
                                    varint(LENGTH)
                                with m.Default():
                                    n = Mux(wt == WIRE_I64, 8, 4)
                                    with m.If(rem < n):
                                        fail()
                                    with m.Else():
                                        m.d.sync += [state.eq(SKIPN), fn.eq(n)]
                        for k, (f, match) in enumerate(zip(fields, matches, strict=True)):
                            with m.Elif(match):
                                dispatch(k, f, wt)
                    with m.Case(VALUE):
                        conv = Signal(64)
                        with m.Switch(f_conv):
                            with m.Case(_ZIGZAG32):
                                m.d.comb += conv.eq(Cat(vval[1:32], 0) ^
                                                    vval[0].replicate(32))
                            with m.Case(_ZIGZAG64):
                                m.d.comb += conv.eq(Cat(vval[1:], 0) ^ vval[0].replicate(64))
                            with m.Case(_BOOL):
                                m.d.comb += conv.eq(vval.any())
                            with m.Default():
                                m.d.comb += conv.eq(vval)
                        write(conv, Mux(f_rep, iaddr, f_off), f_size, Mux(f_rep, CNT, AFTER))
                    with m.Case(LENGTH):
                        past = vval[24:].any() | (vval[:24] > rem)
                        with m.Switch(f_lmode):
                            with m.Case(L_SKIP):
                                with m.If(past):
                                    fail()
                                with m.Elif(vval == 0):
                                    m.d.sync += state.eq(AFTER)
                                with m.Else():
                                    m.d.sync += [state.eq(SKIPN), fn.eq(vval)]
                            with m.Case(L_STRING):
                                with m.If(past | (vval > t.max_bytes)):
                                    fail()
                                with m.Else():
                                    write(vval, f_off, 2, Mux(vval == 0, ZFILL, STR))
                                    m.d.sync += [fn.eq(vval), zn.eq(t.max_bytes - vval),
                                                 s_first.eq(1)]
                            with m.Case(L_MESSAGE):
                                with m.If(past):
                                    fail()
                                with m.Else():
                                    m.d.sync += [depth.eq(depth + 1),
                                                 ends[depth + 1].eq(pos + vval),
                                                 nodes[depth + 1].eq(f_idx + 1),
                                                 cur.eq(f_idx + 1), lim.eq(pos + vval)]
                                    write(1, f_off, 1, POP)
                            with m.Case(L_PACKED):
                                with m.If(past):
                                    fail()
                                with m.Elif(vval == 0):
                                    m.d.sync += state.eq(AFTER)
                                with m.Else():
                                    m.d.sync += [packed.eq(1), lim.eq(pos + vval),
                                                 state.eq(AFTER)]
                    with m.Default():  # SKIP
                        m.d.sync += state.eq(AFTER)

            with m.Case(WRITE):
                m.d.comb += [wp.addr.eq(waddr), wp.data.eq(wdata[:8]), wp.en.eq(1)]
                m.d.sync += [wdata.eq(wdata >> 8), waddr.eq(waddr + 1), wn.eq(wn - 1)]
                with m.If(wn == 1):
                    m.d.sync += state.eq(wnext)

            with m.Case(FIX):  # a fixed-width value's bytes, straight into the record
                with m.If(final):
                    m.d.sync += [bad.eq(1), state.eq(CLEAR), raddr.eq(0)]
                with m.Elif(take):
                    m.d.comb += [wp.addr.eq(waddr), wp.data.eq(byte), wp.en.eq(1)]
                    m.d.sync += [waddr.eq(waddr + 1), pos.eq(pos + 1), fn.eq(fn - 1)]
                    with m.If(fn == 1):
                        m.d.sync += state.eq(Mux(f_rep, CNT, AFTER))

            with m.Case(STR):
                with m.If(final):
                    m.d.sync += [bad.eq(1), state.eq(CLEAR), raddr.eq(0)]
                with m.Elif(take):
                    m.d.comb += [wp.addr.eq(waddr), wp.data.eq(byte), wp.en.eq(1)]
                    m.d.sync += [waddr.eq(waddr + 1), pos.eq(pos + 1), fn.eq(fn - 1),
                                 s_first.eq(0)]
                    with m.If(f_utf8 & ~utf_ok):
                        fail()
                    with m.Elif(fn == 1):
                        with m.If(f_utf8 & ~utf_done):
                            fail()
                        with m.Else():
                            m.d.sync += state.eq(Mux(zn == 0, AFTER, ZFILL))

            with m.Case(ZFILL):  # clear the rest of a string (an earlier value may be there)
                m.d.comb += [wp.addr.eq(waddr), wp.data.eq(0), wp.en.eq(1)]
                m.d.sync += [waddr.eq(waddr + 1), zn.eq(zn - 1)]
                with m.If(zn == 1):
                    m.d.sync += state.eq(AFTER)

            with m.Case(SKIPN):
                with m.If(final):
                    m.d.sync += [bad.eq(1), state.eq(CLEAR), raddr.eq(0)]
                with m.Elif(take):
                    m.d.sync += [pos.eq(pos + 1), fn.eq(fn - 1)]
                    with m.If(fn == 1):
                        m.d.sync += state.eq(AFTER)

            with m.Case(CNT):  # a repeated field's element is in: its count goes up
                write(f_cnt + 1, f_off, 2, AFTER)
                m.d.sync += [f_cnt.eq(f_cnt + 1), iaddr.eq(iaddr + f_size)]
                if counts:
                    m.d.sync += count_of[f_r].eq(f_cnt + 1)

            with m.Case(AFTER):  # a field (or a packed run's element) is done
                with m.If(packed & (pos != lim)):
                    with m.If(f_cnt == t.max_repeat):
                        fail()
                    with m.Elif(f_fixed):
                        with m.If(rem < f_size):
                            fail()
                        with m.Else():
                            m.d.sync += [state.eq(FIX), fn.eq(f_size), waddr.eq(iaddr)]
                    with m.Else():
                        varint(VALUE)
                with m.Else():
                    m.d.sync += [packed.eq(0), lim.eq(ends[depth]), state.eq(POP)]

            with m.Case(POP):  # leave every message that ends here
                with m.If(pos == lim):
                    with m.If(depth == 0):
                        m.d.sync += [state.eq(OUT), raddr.eq(0), ovalid.eq(0)]
                    with m.Else():
                        m.d.sync += [depth.eq(depth - 1), lim.eq(ends[depth - 1]),
                                     cur.eq(nodes[depth - 1])]
                with m.Else():
                    varint(TAG)

            with m.Case(OUT):  # the record out, the memory cleared behind it
                advance = ~ovalid | o.ready
                m.d.comb += rp.en.eq(advance)
                with m.If(advance):
                    with m.If(raddr != size):
                        m.d.comb += [wp.addr.eq(raddr), wp.data.eq(0), wp.en.eq(1)]
                        m.d.sync += [raddr.eq(raddr + 1), ovalid.eq(1)]
                    with m.Else():
                        m.d.sync += ovalid.eq(0)
                        varint(TOPLEN)

            with m.Case(DRAIN):  # drop the rest of a malformed request
                with m.If(final):
                    m.d.sync += [state.eq(CLEAR), raddr.eq(0)]

            with m.Case(CLEAR):
                with m.If(raddr != size):
                    m.d.comb += [wp.addr.eq(raddr), wp.data.eq(0), wp.en.eq(1)]
                    m.d.sync += raddr.eq(raddr + 1)
                with m.Else():
                    m.d.sync += state.eq(END)

            with m.Case(END):
                with m.If(o.ready):
                    m.d.sync += [final.eq(0), bad.eq(0)]
                    varint(TOPLEN)

        m.d.comb += [
            o.valid.eq((state == OUT) & ovalid | (state == END)),
            o.payload.data.eq(rp.data),
            o.payload.nbytes.eq(state == OUT),
            o.payload.last.eq(state == END),
            o.payload.error.eq((state == END) & bad),
        ]
        return m


class _Encoder(wiring.Component):
    """Records in, a length-delimited message per record out (see the module doc).

    The message is written backwards into an output memory, last field first, as ProtoACC's
    serializer does: a length-delimited field's length is then known when its length prefix is
    written (it is the distance the write pointer has moved since its contents began), and no
    second pass over the record is needed. A record is first taken whole into a record memory;
    then the fields are walked from the last to the first, each value read out of the record,
    converted, and written as a varint, fixed bytes, or copied string bytes, then its tag; then
    the message's own length prefix; then the message is read out front to back.
    """

    def __init__(self, table: Table):
        self.table = table
        self.max_message = max_encoded(table)
        self.buffer = self.max_message + varint_len(self.max_message)
        super().__init__({"i_stream": In(byte_stream(1)), "o_stream": Out(byte_stream(1))})

    def elaborate(self, platform):
        m = Module()
        t, fields = self.table, self.table.fields
        size, nbuf = t.record_size, self.buffer
        i, o = self.i_stream, self.o_stream

        m.submodules.rec = rec = Memory(shape=8, depth=max(1, size), init=[])
        rec_w = rec.write_port()
        rec_r = rec.read_port(transparent_for=())
        m.submodules.out = out = Memory(shape=8, depth=nbuf, init=[])
        out_w = out.write_port()
        out_r = out.read_port(transparent_for=())

        (LOAD, WSTEP, READ, SCALAR, STRLEN, COPY, REPCOUNT, ELEM, ELEMVAL, ELEMNEXT, BWV0, BWV,
         BWF, TAGW, NEXT, PREFIX, EMIT, DRAIN, END) = range(19)
        nstates = 19
        state = Signal(range(nstates))
        final = Signal()
        bad = Signal()

        byte = i.payload.data
        has_byte = ~i.payload.last | i.payload.nbytes.any()
        m.d.comb += i.ready.eq(((state == LOAD) | (state == DRAIN)) & ~final)
        beat = i.valid & i.ready
        take = beat & has_byte
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)

        # The record as it loads: where the next byte goes, and each message's present byte.
        laddr = Signal(range(size + 1))
        messages = [k for k, f in enumerate(fields) if f.is_message]
        present = {k: Signal(name=f"present{k}") for k in messages}

        def active(k: int):
            return enclosed_present(fields, present, k)

        # The walk.
        wi = Signal(range(max(1, len(fields))))
        wptr = Signal(range(nbuf + 1))
        mark = {k: Signal(range(nbuf + 1), name=f"mark{k}") for k in messages}
        pmark = Signal(range(nbuf + 1))
        e_off = Signal(range(size + 2))
        e_size = Signal(4)
        e_conv = Signal(3)
        e_fixed = Signal()
        e_utf8 = Signal()
        e_tag = Signal(32)
        rret = Signal(range(nstates))  # where a read returns to
        raddr = Signal(range(size + 1))
        rn = Signal(4)
        rsize = Signal(4)  # bytes a read takes
        v = Signal(64)
        k = Signal(8)  # a repeated field's element
        slen = Signal(range(t.max_bytes + 1))
        cn = Signal(range(t.max_bytes + 2))
        caddr = Signal(range(nbuf + 1))
        m.d.comb += rec_r.addr.eq(raddr)

        # The backward varint (or fixed bytes) writer.
        bx = Signal(64)
        bret = Signal(range(nstates))
        bj = Signal(4)
        bfirst = Signal()

        oaddr = Signal(range(nbuf + 1))
        ovalid = Signal()
        m.d.comb += out_r.addr.eq(oaddr)

        s_first = Signal()
        utf_ok, utf_done = _utf8(m, rec_r.data, s_first, (state == COPY) & (cn != 0), "utf8")

        def fail():
            m.d.sync += [bad.eq(1), state.eq(DRAIN)]

        def bwv(value, then):
            m.d.sync += [state.eq(BWV0), bx.eq(value), bret.eq(then)]

        conv = to_wire(m, e_conv, v)

        def step(n, f):
            """Field ``n`` of the walk: its marks, then its value if it is to be written."""
            # Every message whose last field this is: its contents end where the pointer is now.
            for mk in messages:
                if fields[mk].end - 1 == n:
                    m.d.sync += mark[mk].eq(wptr)
            m.d.sync += [e_off.eq(f.offset), e_utf8.eq(f.type == 9), e_tag.eq(_tag(f))]
            if not f.is_message and not f.is_bytes:
                m.d.sync += [e_conv.eq(_conversion(f)), e_size.eq(f.scalar_size),
                             e_fixed.eq(f.wire_type != WIRE_VARINT)]

            def read(addr, nbytes, then):
                m.d.sync += [state.eq(READ), raddr.eq(addr), rn.eq(0), v.eq(0),
                             rret.eq(then), rsize.eq(nbytes)]

            with m.If(~active(n)):
                m.d.sync += state.eq(NEXT)
            with m.Else():
                if f.is_message:
                    with m.If(present[n]):
                        length = 0 if f.end - 1 == n else mark[n] - wptr
                        m.d.sync += [state.eq(BWV0), bx.eq(length), bret.eq(TAGW)]
                    with m.Else():
                        m.d.sync += state.eq(NEXT)
                elif f.is_bytes:
                    read(f.offset + 1, 2, STRLEN)
                elif f.repeated:
                    read(f.offset + 1, 2, REPCOUNT)
                else:
                    read(f.offset + f.scalar_size - 1, f.scalar_size, SCALAR)

        with m.Switch(state):
            with m.Case(LOAD):
                with m.If(final):
                    m.d.sync += [state.eq(END), bad.eq(laddr != 0)]  # a record cut short
                with m.Elif(take):
                    m.d.comb += [rec_w.addr.eq(laddr), rec_w.data.eq(byte), rec_w.en.eq(1)]
                    m.d.sync += laddr.eq(laddr + 1)
                    for mk in messages:
                        with m.If(laddr == fields[mk].offset):
                            m.d.sync += present[mk].eq(byte != 0)
                    with m.If(laddr == size - 1):
                        m.d.sync += [state.eq(WSTEP), wi.eq(len(fields) - 1), wptr.eq(nbuf),
                                     laddr.eq(0)]

            with m.Case(WSTEP):
                with m.Switch(wi):
                    for n, f in enumerate(fields):
                        with m.Case(n):
                            step(n, f)

            with m.Case(READ):  # e_size bytes, from the highest address down
                m.d.sync += [raddr.eq(raddr - 1), rn.eq(rn + 1)]
                with m.If(rn != 0):
                    m.d.sync += v.eq(Cat(rec_r.data, v[:56]))
                with m.If(rn == rsize):
                    m.d.sync += state.eq(rret)

            with m.Case(SCALAR):
                with m.If(v == 0):  # a proto3 default: left out
                    m.d.sync += state.eq(NEXT)
                with m.Elif(e_fixed):
                    m.d.sync += [state.eq(BWF), bj.eq(e_size - 1), bret.eq(TAGW)]
                with m.Else():
                    bwv(conv, TAGW)

            with m.Case(STRLEN):
                with m.If(v[:16] > t.max_bytes):
                    fail()
                with m.Elif(v[:16] == 0):
                    m.d.sync += state.eq(NEXT)
                with m.Else():
                    m.d.sync += [state.eq(COPY), slen.eq(v), cn.eq(0), raddr.eq(e_off + 2),
                                 wptr.eq(wptr - v[:16]), caddr.eq(wptr - v[:16]),
                                 s_first.eq(1)]

            with m.Case(COPY):  # a string's bytes, front to back, to where they go
                with m.If(cn != slen):
                    m.d.sync += raddr.eq(raddr + 1)
                m.d.sync += cn.eq(cn + 1)
                with m.If(cn != 0):
                    m.d.comb += [out_w.addr.eq(caddr), out_w.data.eq(rec_r.data),
                                 out_w.en.eq(1)]
                    m.d.sync += [caddr.eq(caddr + 1), s_first.eq(0)]
                    with m.If(e_utf8 & ~utf_ok):
                        fail()
                    with m.Elif(cn == slen):
                        with m.If(e_utf8 & ~utf_done):
                            fail()
                        with m.Else():
                            bwv(slen, TAGW)

            with m.Case(REPCOUNT):
                with m.If(v[:16] > t.max_repeat):
                    fail()
                with m.Elif(v[:16] == 0):
                    m.d.sync += state.eq(NEXT)
                with m.Else():
                    m.d.sync += [state.eq(ELEM), k.eq(v - 1), pmark.eq(wptr)]

            with m.Case(ELEM):  # read element k
                shifted = Mux(e_size == 8, k << 3, Mux(e_size == 4, k << 2, k))
                m.d.sync += [state.eq(READ), raddr.eq(e_off + 2 + shifted + e_size - 1),
                             rn.eq(0), v.eq(0), rret.eq(ELEMVAL), rsize.eq(e_size)]

            with m.Case(ELEMVAL):  # packed: zero values are written too
                with m.If(e_fixed):
                    m.d.sync += [state.eq(BWF), bj.eq(e_size - 1), bret.eq(ELEMNEXT)]
                with m.Else():
                    bwv(conv, ELEMNEXT)

            with m.Case(ELEMNEXT):
                with m.If(k == 0):
                    bwv(pmark - wptr, TAGW)
                with m.Else():
                    m.d.sync += [k.eq(k - 1), state.eq(ELEM)]

            with m.Case(BWV0):  # how many bytes the varint of bx takes
                n = Signal(4)
                m.d.comb += n.eq(1)
                for g in range(1, 10):
                    with m.If(bx[7 * g:].any()):
                        m.d.comb += n.eq(g + 1)
                m.d.sync += [state.eq(BWV), bj.eq(n - 1), bfirst.eq(1)]

            with m.Case(BWV):  # its bytes, the last first
                groups = Array(bx[7 * g:7 * g + 7] for g in range(10))
                m.d.comb += [out_w.addr.eq(wptr - 1), out_w.data.eq(Cat(groups[bj], ~bfirst)),
                             out_w.en.eq(1)]
                m.d.sync += [wptr.eq(wptr - 1), bj.eq(bj - 1), bfirst.eq(0)]
                with m.If(bj == 0):
                    m.d.sync += state.eq(bret)

            with m.Case(BWF):  # v's e_size bytes, the last first
                octets = Array(v[8 * g:8 * g + 8] for g in range(8))
                m.d.comb += [out_w.addr.eq(wptr - 1), out_w.data.eq(octets[bj]),
                             out_w.en.eq(1)]
                m.d.sync += [wptr.eq(wptr - 1), bj.eq(bj - 1)]
                with m.If(bj == 0):
                    m.d.sync += state.eq(bret)

            with m.Case(TAGW):
                bwv(e_tag, NEXT)

            with m.Case(NEXT):
                with m.If(wi == 0):
                    bwv(nbuf - wptr, PREFIX)
                with m.Else():
                    m.d.sync += [wi.eq(wi - 1), state.eq(WSTEP)]

            with m.Case(PREFIX):
                m.d.sync += [state.eq(EMIT), oaddr.eq(wptr), ovalid.eq(0)]

            with m.Case(EMIT):
                advance = ~ovalid | o.ready
                m.d.comb += out_r.en.eq(advance)
                with m.If(advance):
                    with m.If(oaddr != nbuf):
                        m.d.sync += [oaddr.eq(oaddr + 1), ovalid.eq(1)]
                    with m.Else():
                        m.d.sync += [ovalid.eq(0), state.eq(LOAD)]

            with m.Case(DRAIN):
                with m.If(final):
                    m.d.sync += state.eq(END)

            with m.Case(END):
                with m.If(o.ready):
                    m.d.sync += [final.eq(0), bad.eq(0), state.eq(LOAD), laddr.eq(0)]

        m.d.comb += [
            o.valid.eq((state == EMIT) & ovalid | (state == END)),
            o.payload.data.eq(out_r.data),
            o.payload.nbytes.eq(state == EMIT),
            o.payload.last.eq(state == END),
            o.payload.error.eq((state == END) & bad),
        ]
        return m


class ProtobufKernel(wiring.Component):
    """A protobuf message type's ``encode`` and ``decode``, built from its field table.

    A request goes to the engine its opcode names; the next request waits until the response
    to this one has ended, so responses keep the order of their requests. A request with an
    opcode the kernel does not have is taken and answered with an empty beat with ``error``.

    Members
    -------
    Parameters
    ----------
    table : Table
    width : int
        Bytes a beat, one of :data:`WIDTHS`: 1, the byte-a-cycle engines; 8, the wide encoder
        (:class:`~hdl.kernels.protobuf_wide.WideEncoder`, a field a cycle) and the byte-a-cycle
        decoder between an unpacker and a packer.

    Members
    -------
    i_stream : ``In(request_stream(width))``
    o_stream : ``Out(byte_stream(width))``
    """

    operations = ("encode", "decode")
    widths = WIDTHS

    def __init__(self, table: Table, width: int = 1):
        from .protobuf_wide import WideDecoder, WideEncoder

        if table.record_size == 0:
            raise ValueError(f"{table.message} has no fields: its records would be empty")
        if width not in WIDTHS:
            raise ValueError(f"ProtobufKernel takes {WIDTHS} bytes a beat, not {width!r}")
        self.table = table
        self.width = width
        if width == 1:
            self.encoder = _Encoder(table)
            self.decoder = _Decoder(table)
        else:
            self.encoder = WideEncoder(table, width)
            self.decoder = WideDecoder(table, width)
        latency = self._latency()
        self.contract_bounds = {"latency": latency, "depth": latency + 4}
        super().__init__({
            "i_stream": In(request_stream(self.width)),
            "o_stream": Out(byte_stream(self.width)),
        })

    def _latency(self, fairness: int = 2) -> int:
        """Cycles from a request's last beat to the end of its response, at most, each response
        beat waiting up to ``fairness - 1`` cycles for ``ready``: the sum of the engines' state
        counts on the longest path (see the states in :class:`_Encoder` and
        :class:`_Decoder`)."""
        t = self.table
        walk = 0
        for f in t.fields:
            tag = 1 + 1 + varint_len(_tag(f)) + 1  # TAGW, BWV0, BWV, NEXT
            if f.is_message:
                walk += 1 + 1 + varint_len(max_encoded(t, t.fields.index(f))) + tag
            elif f.is_bytes:
                walk += 1 + 3 + 1 + t.max_bytes + 1 + 1 + varint_len(t.max_bytes) + tag
            else:
                value = f.scalar_size if f.wire_type != WIRE_VARINT else 1 + _max_value_len(f)
                read = f.scalar_size + 1
                if f.repeated:
                    run = t.max_repeat * _max_value_len(f)
                    walk += (1 + 3 + 1 + t.max_repeat * (1 + read + 1 + value + 1) + 1 +
                             varint_len(run) + tag)
                else:
                    walk += 1 + read + 1 + value + tag
        out = self.encoder.buffer
        encode = walk + 1 + varint_len(self.encoder.max_message) + 1 + 1 + fairness * out + 1
        # decode: the last value's writes (a varint value and a repeated field's count, or a
        # string's clearing), leaving the messages, then the record out (or, for a malformed
        # message, the memory cleared) and the end beat.
        size = t.record_size
        writes = max(1 + 8 + 1 + 2, t.max_bytes)
        decode = writes + 1 + t.depth + 1 + max(1 + fairness * size + 1, 1 + size + 1) + 1
        if self.width == 1:
            return max(encode, decode) + fairness + 2
        # Wide: the last beat may leave up to 16 bytes of records in the encoder's gearbox,
        # each record a load, a walk (a cycle a field, a chunk a cycle of a string, an element
        # a cycle of a repeated field), the prefix and the read-out; and the packer's last two
        # beats. The decoder's window may hold 32 bytes of messages: a byte or more a cycle
        # (a string's, a skipped field's, a field's), and each message its length, its pops
        # and its record's wait for the output register.
        w = self.width
        walk = 0
        for f in t.fields:
            if f.is_bytes:
                walk += 2 + -(-t.max_bytes // w)
            elif f.repeated and not f.is_message:
                walk += 2 + t.max_repeat
            else:
                walk += 1
        record = 3 + walk + 3 + fairness * (-(-out // w) + 2)
        encode = record * (2 * w // size + 2)
        span, chunks = 32, -(-size // w)
        decode = span + span * (1 + t.depth + 3 + fairness * chunks) + fairness * chunks
        return max(encode, decode) + 3 * fairness + 4

    def elaborate(self, platform):
        m = Module()
        m.submodules.encoder = enc = self.encoder
        m.submodules.decoder = dec = self.decoder
        i, o = self.i_stream, self.o_stream

        # Which engine has the request (0 encoder, 1 decoder, 2 none: the opcode is unknown),
        # whether its last beat is in, and whether its response is still going out.
        sel = Signal(2)
        in_request = Signal()
        owed = Signal()  # a response has not ended yet
        first = ~in_request
        op = i.payload.op
        target = Mux(op == _ENCODE, 0, Mux(op == _DECODE, 1, 2))
        route = Mux(first, target, sel)
        # A new request only once the last response has ended.
        can = in_request | ~owed

        for n, engine in enumerate((enc, dec)):
            m.d.comb += [
                engine.i_stream.payload.data.eq(i.payload.data),
                engine.i_stream.payload.nbytes.eq(i.payload.nbytes),
                engine.i_stream.payload.last.eq(i.payload.last),
                engine.i_stream.valid.eq(i.valid & can & (route == n)),
            ]
        unknown_done = Signal()  # the unknown request's last beat is in: answer it
        m.d.comb += i.ready.eq(can & Mux(route == 0, enc.i_stream.ready,
                                         Mux(route == 1, dec.i_stream.ready, ~unknown_done)))
        with m.If(i.valid & i.ready):
            m.d.sync += in_request.eq(~i.payload.last)
            with m.If(first):
                m.d.sync += [sel.eq(target), owed.eq(1)]
            with m.If((route == 2) & i.payload.last):
                m.d.sync += unknown_done.eq(1)

        with m.Switch(sel):
            with m.Case(0):
                m.d.comb += [o.valid.eq(enc.o_stream.valid & owed),
                             o.payload.eq(enc.o_stream.payload),
                             enc.o_stream.ready.eq(o.ready & owed)]
            with m.Case(1):
                m.d.comb += [o.valid.eq(dec.o_stream.valid & owed),
                             o.payload.eq(dec.o_stream.payload),
                             dec.o_stream.ready.eq(o.ready & owed)]
            with m.Default():
                m.d.comb += [o.valid.eq(unknown_done), o.payload.last.eq(1),
                             o.payload.error.eq(1)]
        with m.If(o.valid & o.ready & o.payload.last):
            m.d.sync += [owed.eq(0), unknown_done.eq(0)]
        return m
