"""The protobuf kernel's wide engines: 8 bytes a beat on the wire side, a field a cycle.

:class:`~hdl.kernels.protobuf.ProtobufKernel` built with ``width=8`` takes and gives beats of 8
bytes, and its engines are :class:`WideEncoder` and :class:`WideDecoder`: the same answers as
the byte-a-cycle engines (the same messages and records, the same requests refused), a field
a cycle. Both keep the record in flip-flops, where every field's value is a constant slice; a
record of a few hundred bytes is a few thousand flip-flops, which the ECP5 has and the iCE40
UP5K does not (there the byte-a-cycle engines, ``width=1``, keep the record in block RAM).

:class:`WideEncoder` does what the byte-a-cycle encoder does (same messages, same errors) with
the record in flip-flops instead of a memory, so every field's value is a constant slice of
it, and with the message written backwards into 16 one-byte memory lanes, so that a group of up
to 16 consecutive bytes (a tag and its varint, a tag and a fixed value, 8 bytes of a string)
goes in at any address in one cycle:

* load: the request's beats go through a 16-byte gearbox that hands the record 8 bytes (or the
  record's last few) a cycle, shifted in from the top; the next record loads while the last
  message goes out.
* walk, one cycle a field, from the last field to the first: a scalar's tag and value (nothing
  for a proto3 default or a field of an absent message); a message's tag and the varint of how
  far the write pointer has moved since its last field; a string: 8 of its bytes a cycle, each
  chunk's UTF-8 checked in parallel (:func:`utf8_chunk`), then its tag and length; a repeated
  field: an element a cycle, last first, then its tag and the packed run's length.
* the message's length prefix, then the message read out 8 bytes a cycle through a
  :class:`Packer`, which makes the full beats the link expects (every beat of a response but
  its last carries 8 bytes; a message may begin anywhere in one).

The group written in a cycle is put into the lanes the next cycle (a rotation by the address
modulo 16), which keeps the value's conversion and the varint's length off the memories' path.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..stream import byte_stream
from .protobuf_table import WIRE_VARINT, Field, Table

__all__ = ["WideEncoder", "WideDecoder", "Packer", "utf8_chunk", "chunk_stream"]

_LANES = 16  # bytes the output memory takes in one cycle: a tag (5) and a varint (10) fit


def chunk_stream(width: int) -> stream.Signature:
    """Chunks of ``n`` (0 to ``width``) bytes, the first ``n`` bytes of ``data``, and the end
    of a response with ``last`` (and ``error``)."""
    return stream.Signature(data.StructLayout({
        "data": 8 * width, "n": range(width + 1), "last": 1, "error": 1}))


class Packer(wiring.Component):
    """Chunks of any size in, full beats of ``width`` bytes out (a response's last beat has
    what is left, 0 to ``width`` bytes). A chunk is taken in the same cycle as a full beat goes
    out, so a chunk of ``width`` bytes a cycle passes at full rate. The output comes straight
    from flip-flops."""

    def __init__(self, width: int):
        self.width = width
        super().__init__({"i": In(chunk_stream(width)), "o": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        w = self.width
        i, o = self.i, self.o
        buf = Signal(16 * w)  # bytes at and above cnt are zero
        cnt = Signal(range(2 * w + 1))
        ending = Signal()  # the response's last chunk is in
        error = Signal()

        full = cnt >= w
        m.d.comb += [
            o.valid.eq(full | ending),
            o.payload.data.eq(buf[:8 * w]),
            o.payload.nbytes.eq(Mux(full, w, cnt)),
            o.payload.last.eq(ending & (cnt <= w)),
            o.payload.error.eq(ending & (cnt <= w) & error),
        ]
        sent = o.valid & o.ready
        left = Signal.like(cnt)
        rest = Signal.like(buf)
        m.d.comb += [left.eq(Mux(sent, Mux(full, cnt - w, 0), cnt)),
                     rest.eq(Mux(sent, buf >> (8 * w), buf))]
        m.d.comb += i.ready.eq(~ending & (~full | o.ready))
        mask = Signal(8 * w)
        m.d.comb += mask.eq(Cat(*((i.payload.n > b).replicate(8) for b in range(w))))
        with m.If(i.valid & i.ready):
            m.d.sync += [buf.eq(rest | ((i.payload.data & mask) << (left * 8))),
                         cnt.eq(left + i.payload.n)]
            with m.If(i.payload.last):
                m.d.sync += [ending.eq(1), error.eq(i.payload.error)]
        with m.Else():
            m.d.sync += [buf.eq(rest), cnt.eq(left)]
        with m.If(sent & o.payload.last):
            m.d.sync += [ending.eq(0), error.eq(0)]
        return m


def utf8_chunk(m: Module, chunk, n, prev, name: str):
    """RFC 3629 UTF-8 over ``n`` bytes of ``chunk`` at once, the string's three bytes before
    them in ``prev`` (0 before its first): returns ``(ok, complete)``, whether every byte may
    come where it is, and whether no sequence is left open after the ``n``-th.

    Every rule is local (simdjson's approach): a byte is a continuation byte exactly when one
    of the three before it opens a sequence that long; C0, C1 and F5 to FF never come; and
    after E0, ED, F0 and F4 the next byte's range is narrower (no overlong forms, surrogates,
    or values above U+10FFFF).
    """
    width = len(chunk) // 8
    seq = [prev.word_select(k, 8) for k in range(3)] + [chunk.word_select(k, 8)
                                                        for k in range(width)]

    def lead2(b):
        return b >= 0xC0

    def lead3(b):
        return b >= 0xE0

    def lead4(b):
        return b >= 0xF0

    bad = []
    for p in range(width):
        b, p1, p2, p3 = seq[p + 3], seq[p + 2], seq[p + 1], seq[p]
        cont = b[6:8] == 0b10
        need = lead2(p1) | lead3(p2) | lead4(p3)
        wrong = ((cont != need) | (b == 0xC0) | (b == 0xC1) | (b >= 0xF5) |
                 ((p1 == 0xE0) & (b < 0xA0)) | ((p1 == 0xED) & (b > 0x9F)) |
                 ((p1 == 0xF0) & (b < 0x90)) | ((p1 == 0xF4) & (b > 0x8F)))
        bad.append(wrong & (n > p))
    ok = Signal(name=f"{name}_ok")
    m.d.comb += ok.eq(~Cat(*bad).any())
    # After the n-th byte: would a continuation byte be due?
    due = Array(lead2(seq[e - 1]) | lead3(seq[e - 2]) | lead4(seq[e - 3])
                for e in range(3, width + 4))
    complete = Signal(name=f"{name}_complete")
    m.d.comb += complete.eq(~due[n])
    return ok, complete


def _varint_bytes(m: Module, value, name: str):
    """The varint of a 64-bit ``value``: ``(bytes, length)``, 80 bits and 1 to 10."""
    length = Signal(range(11), name=f"{name}_len")
    m.d.comb += length.eq(1)
    for g in range(1, 10):
        with m.If(value[7 * g:].any()):
            m.d.comb += length.eq(g + 1)
    out = Cat(*(Cat(value[7 * g:7 * g + 7], length > g + 1) for g in range(10)))
    return out, length


def _varint_at(m: Module, window, maxlen: int, name: str):
    """The varint at the start of ``window`` (bytes): ``(length, value, ended)``: ``length``
    (1 to ``maxlen``) is its bytes if ``ended`` (a byte without the continuation bit among the
    first ``maxlen``); ``value`` the 64-bit value of those bytes (a 10th byte gives bit 63)."""
    octets = [window.word_select(j, 8) for j in range(maxlen)]
    length = Signal(range(maxlen + 1), name=f"{name}_len")
    ended = Signal(name=f"{name}_ended")
    m.d.comb += [length.eq(maxlen), ended.eq(0)]
    for j in reversed(range(maxlen)):
        with m.If(~octets[j][7]):
            m.d.comb += [length.eq(j + 1), ended.eq(1)]
    value = Signal(64, name=f"{name}_value")
    m.d.comb += value.eq(Cat(*(Mux(length > j, octets[j][:7], 0) for j in range(maxlen))))
    return length, value, ended


class WideDecoder(wiring.Component):
    """Length-delimited messages in, a record per message out, ``width`` bytes a beat: the
    byte-a-cycle decoder's answer a field a cycle.

    The wire bytes wait in a 32-byte window, the next unparsed byte first. In a cycle the
    decoder takes a whole field from the front of it: the tag (up to 5 bytes) and, for a
    varint or fixed-width value, the value (up to 10 bytes), or, for a length-delimited field,
    its length; a string then comes 8 bytes a cycle (its UTF-8 checked in parallel), a packed
    run a value a cycle, and an unknown length-delimited field is skipped up to 16 bytes a
    cycle. A field is taken only when every byte it may need is in the window (16 bytes, or
    the rest of the message, or the request has ended), so a field that runs past the end of
    its message, or of the request, is refused in the cycle it is seen.

    The record is in flip-flops: every field's value has its place, written whole in the
    cycle its field is taken. When a message ends its record is copied into an output register
    and cleared, and goes out 8 bytes a beat through a :class:`Packer` while the next message
    is decoded.
    """

    def __init__(self, table: Table, width: int = 8):
        if width != 8:
            raise ValueError(f"WideDecoder takes 8 bytes a beat, not {width!r}")
        self.table = table
        self.width = width
        super().__init__({"i_stream": In(byte_stream(width)), "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        from .protobuf import _BOOL, _ZIGZAG32, _ZIGZAG64, _conversion
        from .protobuf_table import MAX_MESSAGE, WIRE_I64, WIRE_LEN

        m = Module()
        t, fields = self.table, self.table.fields
        w, size = self.width, t.record_size
        i = self.i_stream
        m.submodules.packer = packer = Packer(w)
        wiring.connect(m, wiring.flipped(self.o_stream), packer.o)
        po = packer.i

        TOP, FIELD, PACKED, STR, SKIP, POP, DONE, DRAIN, END = range(9)
        state = Signal(range(9))
        final = Signal()
        bad = Signal()

        # -- the window --------------------------------------------------------------------
        span = 32
        win = Signal(8 * span)  # bytes at and above cnt are zero
        cnt = Signal(range(span + 1))
        used = Signal(range(17))  # bytes the cycle takes from the front
        m.d.comb += i.ready.eq(~final & ((state == DRAIN) | (cnt <= span - w)))
        beat = i.valid & i.ready
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)
        keep = beat & (state != DRAIN)
        mask = Cat(*((i.payload.nbytes > b).replicate(8) for b in range(w)))
        left = Signal.like(cnt)
        m.d.comb += left.eq(cnt - used)
        m.d.sync += [win.eq((win >> (used * 8)) |
                            (Mux(keep, i.payload.data & mask, 0) << (left * 8))),
                     cnt.eq(left + Mux(keep, i.payload.nbytes, 0))]

        # Where the decoder is: bytes of the message taken, and where the current message (or
        # packed run) ends; a stack of the ends and the fields of the messages it is in.
        depth_max = t.depth
        pos = Signal(25)
        lim = Signal(25)
        ends = Array(Signal(25, name=f"end{d}") for d in range(depth_max + 1))
        nodes = Array(Signal(range(len(fields) + 1), name=f"node{d}")
                      for d in range(depth_max + 1))
        depth = Signal(range(depth_max + 1))
        cur = Signal(range(len(fields) + 1))
        r = Signal(26)  # bytes left in the message (or packed run)
        m.d.comb += r.eq(lim - pos)
        room = Signal(26)  # bytes a field may take: in the message and in the window
        m.d.comb += room.eq(Mux(r < cnt, r, cnt))
        # Every byte a field may need is in the window (or will never come).
        whole = (cnt >= 16) | final | (cnt >= ends[0] - pos)

        rec = Signal(8 * size)
        out = Signal(8 * size)
        chunks = -(-size // w)
        ochunks = Signal(range(chunks + 1))

        def rslice(offset: int, n: int):
            return rec[8 * offset:8 * (offset + n)]

        def fail():
            m.d.sync += [bad.eq(1), state.eq(DRAIN), rec.eq(0)]

        def take(n):
            m.d.comb += used.eq(n)
            m.d.sync += pos.eq(pos + n)

        # The field's parts at the front of the window: the tag, and what follows it.
        tlen, tval, tended = _varint_at(m, win, 5, "tag")
        fieldno, wt = tval[3:32], tval[:3]
        after = Signal(8 * 10)
        at = Signal(range(6))  # where the value starts: after the tag, or at 0 in a packed run
        m.d.comb += [at.eq(Mux(state == PACKED, 0, tlen)),
                     after.eq((win >> (at * 8))[:80])]
        vlen, vval, vended = _varint_at(m, after, 10, "value")
        llen, lval, lended = _varint_at(m, after, 5, "length")
        lval35 = Signal(35)
        m.d.comb += lval35.eq(Cat(*(Mux(llen > j, after.word_select(j, 8)[:7], 0)
                                    for j in range(5))))
        vok = vended & ~((vlen == 10) & after.word_select(9, 8)[1:].any()) & (at + vlen <= room)
        lok = lended & (at + llen <= room)
        body = Signal(26)  # a length-delimited field's bytes may not run past the message
        m.d.comb += body.eq(r - at - llen)
        lfits = lok & (lval35 <= body)
        tok = tended & (tlen <= room) & ~tval[32:].any() & (fieldno != 0) & \
            (wt != 3) & (wt != 4) & (wt != 6) & (wt != 7)

        def conv(f: Field, value):
            c = _conversion(f)
            if c == _ZIGZAG32:
                return Cat(value[1:32], 0) ^ value[0].replicate(32)
            if c == _ZIGZAG64:
                return Cat(value[1:], 0) ^ value[0].replicate(64)
            if c == _BOOL:
                return value.any()
            return value

        def next_after(n):
            """After a field of ``n`` bytes: leave the messages that end there, or go on."""
            with m.If(pos + n == lim):
                m.d.sync += state.eq(POP)
            with m.Else():  # the next field, or the next value of a packed run
                m.d.sync += state.eq(Mux(state == PACKED, PACKED, FIELD))

        slen = Signal(range(t.max_bytes + 1))  # a string's bytes still to come
        sfield = Signal(range(max(1, len(fields))))
        sj = Signal(range(-(-t.max_bytes // w) + 1))
        s_utf8 = Signal()
        prev = Signal(24)
        skip = Signal(35)
        pfield = Signal(range(max(1, len(fields))))

        def value_into(f: Field, offset: int, n_from, also=()):
            """A scalar value of field ``f`` at the front of ``after``, into the record at
            ``offset``; ``n_from``: bytes before it this cycle (the tag's, or 0); ``also``:
            more to do if it is good."""
            n = f.scalar_size
            if f.wire_type == WIRE_VARINT:
                with m.If(vok):
                    m.d.sync += [rslice(offset, n).eq(conv(f, vval)), *also]
                    take(n_from + vlen)
                    next_after(n_from + vlen)
                with m.Else():
                    fail()
            else:
                with m.If(n_from + n <= room):
                    m.d.sync += [rslice(offset, n).eq(after[:8 * n]), *also]
                    take(n_from + n)
                    next_after(n_from + n)
                with m.Else():
                    fail()

        def append(f: Field, n_from):
            """The next element of repeated field ``f``."""
            count = rslice(f.offset, 2)
            with m.If(count >= t.max_repeat):
                fail()
            with m.Else():
                with m.Switch(count):
                    for e in range(t.max_repeat):
                        with m.Case(e):
                            value_into(f, f.offset + 2 + e * f.scalar_size, n_from,
                                       [count.eq(count + 1)])

        def dispatch(k: int, f: Field):
            if f.is_message or f.is_bytes:
                with m.If((wt == WIRE_LEN) & lfits):
                    take(tlen + llen)
                    if f.is_message:
                        m.d.sync += [rslice(f.offset, 1).eq(1), depth.eq(depth + 1),
                                     ends[depth + 1].eq(pos + tlen + llen + lval35),
                                     nodes[depth + 1].eq(k + 1), cur.eq(k + 1),
                                     lim.eq(pos + tlen + llen + lval35)]
                        with m.If(lval35 == 0):
                            m.d.sync += state.eq(POP)  # an empty message ends here
                        with m.Else():
                            m.d.sync += state.eq(FIELD)
                    else:
                        with m.If(lval35 > t.max_bytes):
                            fail()
                        with m.Else():
                            m.d.sync += [rslice(f.offset, 2).eq(lval35),
                                         rslice(f.offset + 2, t.max_bytes).eq(0),
                                         slen.eq(lval35), sfield.eq(k), sj.eq(0), prev.eq(0),
                                         s_utf8.eq(f.type == 9)]
                            with m.If(lval35 == 0):
                                next_after(tlen + llen)
                            with m.Else():
                                m.d.sync += state.eq(STR)
                with m.Else():
                    fail()
                return
            if f.repeated:
                with m.If((wt == WIRE_LEN) & lfits):
                    take(tlen + llen)
                    with m.If(lval35 == 0):
                        next_after(tlen + llen)
                    with m.Else():
                        m.d.sync += [state.eq(PACKED), pfield.eq(k),
                                     lim.eq(pos + tlen + llen + lval35)]
                with m.Elif(wt == f.wire_type):
                    append(f, tlen)
                with m.Else():
                    fail()
                return
            with m.If(wt == f.wire_type):
                value_into(f, f.offset, tlen)
            with m.Else():
                fail()

        strings = [(k, f) for k, f in enumerate(fields) if f.is_bytes]
        reps = [(k, f) for k, f in enumerate(fields) if f.repeated and not f.is_message]
        s_n = Signal(range(w + 1))
        m.d.comb += s_n.eq(Mux(slen < w, slen, w))
        utf_ok, utf_done = utf8_chunk(m, win[:8 * w], s_n, prev, "utf8")

        with m.Switch(state):
            with m.Case(TOP):  # a message's length
                top_len, top_val, top_ended = _varint_at(m, win, 10, "top")
                with m.If(final & (cnt == 0)):
                    m.d.sync += state.eq(END)  # the request ended between messages
                with m.Elif((cnt >= 10) | final):
                    with m.If(~top_ended | (top_len > cnt) | (top_val > MAX_MESSAGE) |
                              ((top_len == 10) & win.word_select(9, 8)[1:].any())):
                        fail()
                    with m.Else():
                        m.d.comb += used.eq(top_len)
                        m.d.sync += [pos.eq(0), lim.eq(top_val), ends[0].eq(top_val),
                                     depth.eq(0), cur.eq(0)]
                        with m.If(top_val == 0):
                            m.d.sync += state.eq(DONE)
                        with m.Else():
                            m.d.sync += state.eq(FIELD)

            with m.Case(FIELD):
                with m.If(whole):
                    matches = [(cur == f.parent + 1) & (fieldno == f.number) for f in fields]
                    known = Cat(*matches).any() if fields else Const(0)
                    with m.If(~tok):
                        fail()
                    with m.Elif(~known):  # skip it
                        with m.Switch(wt):
                            with m.Case(WIRE_VARINT):
                                with m.If(vok):
                                    take(tlen + vlen)
                                    next_after(tlen + vlen)
                                with m.Else():
                                    fail()
                            with m.Case(WIRE_LEN):
                                with m.If(lfits):
                                    take(tlen + llen)
                                    with m.If(lval35 == 0):
                                        next_after(tlen + llen)
                                    with m.Else():
                                        m.d.sync += [state.eq(SKIP), skip.eq(lval35)]
                                with m.Else():
                                    fail()
                            with m.Default():
                                n = Mux(wt == WIRE_I64, 8, 4)
                                with m.If(tlen + n <= room):
                                    take(tlen + n)
                                    next_after(tlen + n)
                                with m.Else():
                                    fail()
                    for k, (f, match) in enumerate(zip(fields, matches, strict=True)):
                        with m.Elif(match):
                            dispatch(k, f)

            with m.Case(PACKED):  # a value of a packed run a cycle
                with m.If(whole):
                    with m.Switch(pfield):
                        for k, f in reps:
                            with m.Case(k):
                                append(f, 0)

            with m.Case(STR):  # 8 bytes of a string a cycle
                with m.If(cnt >= s_n):
                    m.d.comb += used.eq(s_n)
                    m.d.sync += [pos.eq(pos + s_n), slen.eq(slen - s_n), sj.eq(sj + 1),
                                 prev.eq(win[8 * (w - 3):8 * w])]
                    with m.Switch(sfield):
                        for k, f in strings:
                            with m.Case(k):
                                for j in range(-(-t.max_bytes // w)):
                                    n = min(w, t.max_bytes - j * w)
                                    with m.If(sj == j):
                                        data_ = Cat(*(Mux(s_n > b, win.word_select(b, 8), 0)
                                                      for b in range(n)))
                                        m.d.sync += rslice(f.offset + 2 + j * w, n).eq(data_)
                    with m.If(s_utf8 & (~utf_ok | ((slen == s_n) & ~utf_done))):
                        fail()
                    with m.Elif(slen == s_n):
                        next_after(s_n)
                with m.Elif(final):
                    fail()  # the request ended inside the string

            with m.Case(SKIP):  # an unknown field's bytes, up to 16 a cycle
                n = Signal(range(17))
                m.d.comb += n.eq(Mux(skip < 16, skip, 16))
                with m.If(cnt >= n):
                    take(n)
                    m.d.sync += skip.eq(skip - n)
                    with m.If(skip == n):
                        next_after(n)
                with m.Elif(cnt != 0):
                    take(cnt)
                    m.d.sync += skip.eq(skip - cnt)
                with m.Elif(final):
                    fail()

            with m.Case(POP):  # leave every message (or packed run) that ends here
                with m.If(pos == lim):
                    with m.If(lim != ends[depth]):  # a packed run ended
                        m.d.sync += lim.eq(ends[depth])
                    with m.Elif(depth == 0):
                        m.d.sync += state.eq(DONE)
                    with m.Else():
                        m.d.sync += [depth.eq(depth - 1), lim.eq(ends[depth - 1]),
                                     cur.eq(nodes[depth - 1])]
                with m.Else():
                    m.d.sync += state.eq(FIELD)

            with m.Case(DONE):  # the record to the output register, once it is free
                with m.If(ochunks == 0):
                    m.d.sync += [out.eq(rec), rec.eq(0), ochunks.eq(chunks), state.eq(TOP)]

            with m.Case(DRAIN):  # drop the rest of a malformed request
                m.d.sync += cnt.eq(0)
                with m.If(final):
                    m.d.sync += state.eq(END)

            with m.Case(END):
                with m.If(ochunks == 0):
                    m.d.comb += [po.valid.eq(1), po.payload.last.eq(1),
                                 po.payload.error.eq(bad)]
                    with m.If(po.ready):
                        m.d.sync += [final.eq(0), bad.eq(0), state.eq(TOP), cnt.eq(0),
                                     win.eq(0)]

        # The records out, 8 bytes a beat.
        with m.If(ochunks != 0):
            m.d.comb += [po.valid.eq(1), po.payload.data.eq(out[:8 * w]),
                         po.payload.n.eq(Mux(ochunks == 1, size - (chunks - 1) * w, w))]
            with m.If(po.ready):
                m.d.sync += [out.eq(out >> (8 * w)), ochunks.eq(ochunks - 1)]
        return m


class WideEncoder(wiring.Component):
    """Records in, a length-delimited message per record out, ``width`` bytes a beat: the
    byte-a-cycle encoder's answer a field a cycle (see the module doc)."""

    def __init__(self, table: Table, width: int = 8):
        from .protobuf import max_encoded, varint_len

        if width != 8:
            raise ValueError(f"WideEncoder takes 8 bytes a beat, not {width!r}")
        self.table = table
        self.width = width
        self.max_message = max_encoded(table)
        self.buffer = self.max_message + varint_len(self.max_message)
        super().__init__({"i_stream": In(byte_stream(width)), "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        from .protobuf import _conversion, _tag, enclosed_present, to_wire

        m = Module()
        t, fields = self.table, self.table.fields
        w, size, nbuf = self.width, t.record_size, self.buffer
        i = self.i_stream
        m.submodules.packer = packer = Packer(w)
        wiring.connect(m, wiring.flipped(self.o_stream), packer.o)
        po = packer.i

        (LOAD, WALK, COPY, STRTAG, REP, REPTAG, PREFIX, EMIT0, EMIT, DRAIN, END) = range(11)
        state = Signal(range(11))
        final = Signal()
        bad = Signal()

        def fail():
            m.d.sync += [bad.eq(1), state.eq(DRAIN)]

        # -- the load: a gearbox from the request's beats to 8-byte chunks of records --------
        chunks = -(-size // w)
        rec = Signal(8 * w * chunks)
        sbuf = Signal(16 * w)  # bytes at and above scnt are zero
        scnt = Signal(range(2 * w + 1))
        laddr = Signal(range(size + 1))
        loading = ((state == LOAD) | (state == EMIT0) | (state == EMIT)) & (laddr != size)
        need = Signal(range(w + 1))
        m.d.comb += need.eq(Mux(size - laddr >= w, w, size - laddr))
        consume = Signal()
        m.d.comb += consume.eq(loading & (scnt >= need))
        used = Mux(consume, need, 0)
        base = Signal.like(scnt)
        m.d.comb += base.eq(scnt - used)
        m.d.comb += i.ready.eq(((state == DRAIN) | (base <= w)) & ~final)
        beat = i.valid & i.ready
        with m.If(beat & i.payload.last):
            m.d.sync += final.eq(1)
        mask = Cat(*((i.payload.nbytes > b).replicate(8) for b in range(w)))
        keep = beat & (state != DRAIN)
        m.d.sync += [sbuf.eq((sbuf >> (used * 8)) | (Mux(keep, i.payload.data & mask, 0) <<
                                                     (base * 8))),
                     scnt.eq(base + Mux(keep, i.payload.nbytes, 0))]
        with m.If(consume):
            m.d.sync += [rec.eq(Cat(rec[8 * w:], sbuf[:8 * w])), laddr.eq(laddr + need)]

        def rbytes(offset: int, n: int):
            return rec[8 * offset:8 * (offset + n)]

        messages = [k for k, f in enumerate(fields) if f.is_message]
        present = {k: rbytes(fields[k].offset, 1).any() for k in messages}

        def active(k: int):
            return enclosed_present(fields, present, k)

        # -- the walk ---------------------------------------------------------------------
        wi = Signal(range(max(1, len(fields))))
        wptr = Signal(range(nbuf + 1))
        mark = {k: Signal(range(nbuf + 1), name=f"mark{k}") for k in messages}
        pmark = Signal(range(nbuf + 1))
        k = Signal(8)  # a repeated field's element
        slen = Signal(range(t.max_bytes + 1))
        cj = Signal(range(-(-t.max_bytes // w) + 1))  # a string's chunk
        cbase = Signal(range(nbuf + 1))
        prev = Signal(24)  # a string's last three bytes so far (for UTF-8)

        # What the cycle writes: a group of g_n bytes ending at g_end. A value (converted, as
        # a varint or fixed bytes) after a tag (if e_taglen), or a string chunk.
        e_val = Signal(64)
        e_conv = Signal(3)
        e_fixed = Signal()
        e_size = Signal(4)
        e_tag = Signal(40)
        e_taglen = Signal(range(6))
        e_chunk = Signal()  # write s_data's s_n bytes at g_end instead
        s_data = Signal(8 * w)
        s_n = Signal(range(w + 1))
        g_end = Signal(range(nbuf + 1))
        go = Signal()  # write the group
        m.d.comb += g_end.eq(wptr)

        conv = to_wire(m, e_conv, e_val)
        vbytes, vlen = _varint_bytes(m, conv, "value")
        val_bytes = Mux(e_fixed, Cat(e_val, Const(0, 16)), vbytes)
        val_len = Mux(e_fixed, e_size, vlen)
        g_data = Signal(8 * _LANES)
        g_n = Signal(range(_LANES + 1))
        with m.If(e_chunk):
            m.d.comb += [g_data.eq(s_data), g_n.eq(s_n)]
        with m.Else():
            m.d.comb += [g_data.eq(e_tag | (val_bytes << (e_taglen * 8))),
                         g_n.eq(e_taglen + val_len)]

        def valued(value, conv_, fixed, nbytes):
            m.d.comb += [e_val.eq(value), e_conv.eq(conv_), e_fixed.eq(fixed), e_size.eq(nbytes)]

        def tagged(f: Field, value, conv_=None, fixed=False, nbytes=8):
            tag = _tag(f)
            tbytes, tlen = [], 0
            while True:
                tlen += 1
                tbytes.append((tag & 0x7F) | (0x80 if tag >= 0x80 else 0))
                tag >>= 7
                if not tag:
                    break
            m.d.comb += [e_val.eq(value), e_tag.eq(int.from_bytes(bytes(tbytes), "little")),
                         e_taglen.eq(tlen), e_fixed.eq(fixed), e_size.eq(nbytes)]
            if conv_ is not None:
                m.d.comb += e_conv.eq(conv_)

        def write():
            m.d.comb += go.eq(1)
            m.d.sync += wptr.eq(wptr - g_n)

        def next_field():
            with m.If(wi == 0):
                m.d.sync += state.eq(PREFIX)
            with m.Else():
                m.d.sync += [wi.eq(wi - 1), state.eq(WALK)]

        def step(n: int, f: Field):
            for mk in messages:
                if fields[mk].end - 1 == n:
                    m.d.sync += mark[mk].eq(wptr)
            with m.If(~active(n)):
                next_field()
            with m.Else():
                emit(n, f)

        def emit(n: int, f: Field):
            """Field ``n``'s cycle, when every message it is in is present."""
            if f.is_message:
                length = Const(0) if f.end - 1 == n else mark[n] - wptr
                with m.If(present[n]):
                    tagged(f, length)
                    write()
                next_field()
            elif f.is_bytes:
                n_ = rbytes(f.offset, 2)
                with m.If(n_ > t.max_bytes):
                    fail()
                with m.Elif(n_ == 0):
                    next_field()
                with m.Else():
                    m.d.sync += [state.eq(COPY), slen.eq(n_), cj.eq(0), prev.eq(0),
                                 wptr.eq(wptr - n_), cbase.eq(wptr - n_)]
            elif f.repeated:
                count = rbytes(f.offset, 2)
                with m.If(count > t.max_repeat):
                    fail()
                with m.Elif(count == 0):
                    next_field()
                with m.Else():
                    m.d.sync += [state.eq(REP), k.eq(count - 1), pmark.eq(wptr)]
            else:
                value = rbytes(f.offset, f.scalar_size)
                tagged(f, value, _conversion(f), f.wire_type != WIRE_VARINT, f.scalar_size)
                with m.If(value.any()):
                    write()
                next_field()

        check = Signal()  # the string is a string (UTF-8), not bytes
        utf_ok, utf_done = utf8_chunk(m, s_data[:8 * w], s_n, prev, "utf8")
        strings = [(n, f) for n, f in enumerate(fields) if f.is_bytes]
        reps = [(n, f) for n, f in enumerate(fields) if f.repeated]

        with m.Switch(state):
            with m.Case(LOAD):
                with m.If(laddr == size):
                    m.d.sync += [state.eq(WALK), wi.eq(len(fields) - 1), wptr.eq(nbuf),
                                 laddr.eq(0)]
                with m.Elif(final & ~consume):
                    # The request has ended: between records, that is the end of the answer.
                    m.d.sync += [state.eq(END), bad.eq((laddr != 0) | (scnt != 0))]

            with m.Case(WALK):
                with m.Switch(wi):
                    for n, f in enumerate(fields):
                        with m.Case(n):
                            step(n, f)

            with m.Case(COPY):  # a string's chunk cj, to where it goes
                last_chunk = (cj + 1) * w >= slen
                m.d.comb += [e_chunk.eq(1), s_n.eq(Mux(last_chunk, slen - cj * w, w)),
                             g_end.eq(cbase + cj * w + s_n), go.eq(1)]
                with m.Switch(wi):
                    for n, f in strings:
                        with m.Case(n):
                            parts = Array(rec[8 * (f.offset + 2 + c * w):
                                              8 * (f.offset + 2 + c * w + w)]
                                          for c in range(-(-t.max_bytes // w)))
                            m.d.comb += s_data.eq(parts[cj])
                            if f.type == 9:
                                m.d.comb += check.eq(1)
                m.d.sync += [cj.eq(cj + 1), prev.eq(s_data[8 * (w - 3):8 * w])]
                with m.If(check & (~utf_ok | (last_chunk & ~utf_done))):
                    fail()
                with m.Elif(last_chunk):
                    m.d.sync += state.eq(STRTAG)

            with m.Case(STRTAG):
                with m.Switch(wi):
                    for n, f in strings:
                        with m.Case(n):
                            tagged(f, slen)
                write()
                next_field()

            with m.Case(REP):  # element k, the last first; zero values are written too
                with m.Switch(wi):
                    for n, f in reps:
                        with m.Case(n):
                            size_ = f.scalar_size
                            items = Array(rbytes(f.offset + 2 + e * size_, size_)
                                          for e in range(t.max_repeat))
                            valued(items[k], _conversion(f), f.wire_type != WIRE_VARINT,
                                   size_)
                write()
                m.d.sync += k.eq(k - 1)
                with m.If(k == 0):
                    m.d.sync += state.eq(REPTAG)

            with m.Case(REPTAG):
                with m.Switch(wi):
                    for n, f in reps:
                        with m.Case(n):
                            tagged(f, pmark - wptr)
                write()
                next_field()

            with m.Case(PREFIX):
                m.d.comb += [e_val.eq(nbuf - wptr), e_taglen.eq(0)]
                write()
                m.d.sync += state.eq(EMIT0)

            with m.Case(DRAIN):
                with m.If(final):
                    m.d.sync += state.eq(END)

        # -- the output memory: 16 lanes, a group of up to 16 bytes written the next cycle ----
        rows = -(-nbuf // _LANES) + 1
        lanes = [Memory(shape=8, depth=rows, init=[]) for _ in range(_LANES)]
        for j, lane in enumerate(lanes):
            m.submodules[f"lane{j}"] = lane
        wports = [lane.write_port() for lane in lanes]
        rports = [lane.read_port(transparent_for=()) for lane in lanes]
        w_go = Signal()
        w_data = Signal(8 * _LANES)
        w_n = Signal(range(_LANES + 1))
        w_start = Signal(range(nbuf + 1))
        m.d.sync += [w_go.eq(go), w_data.eq(g_data), w_n.eq(g_n), w_start.eq(g_end - g_n)]
        rot = Signal(8 * _LANES)
        m.d.comb += rot.eq(_rotate_left(w_data, w_start[:4], _LANES))
        for j, port in enumerate(wports):
            d = Signal(4, name=f"wd{j}")
            m.d.comb += d.eq(j - w_start[:4])
            m.d.comb += [port.addr.eq((w_start + d) >> 4), port.data.eq(rot[8 * j:8 * j + 8]),
                         port.en.eq(w_go & (d < w_n))]

        # -- the read-out: 8 bytes a cycle from wptr, into the packer ----------------------
        oaddr = Signal(range(nbuf + 1))
        ovalid = Signal()
        o_rot = Signal(4)
        o_n = Signal(range(w + 1))
        advance = ~ovalid | po.ready
        for j, port in enumerate(rports):
            d = Signal(4, name=f"rd{j}")
            m.d.comb += d.eq(j - oaddr[:4])
            m.d.comb += [port.addr.eq((oaddr + d) >> 4), port.en.eq(advance)]
        got = Cat(*(port.data for port in rports))
        m.d.comb += [po.payload.data.eq(_rotate_right(got, o_rot, _LANES)[:8 * w]),
                     po.payload.n.eq(o_n)]
        with m.Switch(state):
            with m.Case(EMIT0):  # the prefix is in the lanes now
                m.d.sync += [state.eq(EMIT), oaddr.eq(wptr), ovalid.eq(0)]
            with m.Case(EMIT):
                m.d.comb += po.valid.eq(ovalid)
                with m.If(advance):
                    with m.If(oaddr != nbuf):
                        m.d.sync += [oaddr.eq(Mux(nbuf - oaddr >= w, oaddr + w, nbuf)),
                                     o_n.eq(Mux(nbuf - oaddr >= w, w, nbuf - oaddr)),
                                     o_rot.eq(oaddr[:4]), ovalid.eq(1)]
                    with m.Else():
                        m.d.sync += [ovalid.eq(0), state.eq(LOAD)]
            with m.Case(END):
                m.d.comb += [po.valid.eq(1), po.payload.n.eq(0), po.payload.last.eq(1),
                             po.payload.error.eq(bad)]
                with m.If(po.ready):
                    m.d.sync += [final.eq(0), bad.eq(0), state.eq(LOAD), laddr.eq(0),
                                 scnt.eq(0), sbuf.eq(0)]
        return m


def _rotate_left(value, amount, lanes: int):
    """``value`` (``lanes`` bytes) rotated ``amount`` bytes up: byte b goes to b + amount."""
    out = value
    for bit in range(max(1, (lanes - 1).bit_length())):
        s = 8 * (1 << bit)
        out = Mux(amount[bit], Cat(out[-s:], out[:-s]), out)
    return out


def _rotate_right(value, amount, lanes: int):
    """``value`` (``lanes`` bytes) rotated ``amount`` bytes down: byte b + amount goes to b."""
    out = value
    for bit in range(max(1, (lanes - 1).bit_length())):
        s = 8 * (1 << bit)
        out = Mux(amount[bit], Cat(out[s:], out[:s]), out)
    return out
