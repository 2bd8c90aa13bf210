"""The protobuf kernel's wide engines: W bytes a cycle on the wire side, a field a cycle.

:class:`~hdl.kernels.protobuf.ProtobufKernel` built with ``width=8`` takes and gives beats of 8
bytes. Its encoder is :class:`WideEncoder`; its decoder is the byte-a-cycle one between an
:class:`Unpacker` and a :class:`Packer` (a wide decoder is still to come).

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

__all__ = ["WideEncoder", "NarrowDecoder", "Packer", "Unpacker", "utf8_chunk", "chunk_stream"]

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


class Unpacker(wiring.Component):
    """Beats of ``width`` bytes in, a byte a beat out (``last`` on the last byte of a last beat,
    or alone when the last beat is empty), at a byte a cycle."""

    def __init__(self, width: int):
        self.width = width
        super().__init__({"i": In(byte_stream(width)), "o": Out(byte_stream(1))})

    def elaborate(self, platform):
        m = Module()
        w = self.width
        i, o = self.i, self.o
        held = Signal()
        beat = Signal(8 * w)
        n = Signal(range(w + 1))
        j = Signal(range(w + 1))
        last = Signal()
        end = j + 1 >= n  # the byte going out is the beat's last (or the beat is empty)
        m.d.comb += [
            o.valid.eq(held),
            o.payload.data.eq(beat.word_select(j, 8) if w > 1 else beat),
            o.payload.nbytes.eq(n != 0),
            o.payload.last.eq(last & end),
            i.ready.eq(~held | (o.ready & end)),
        ]
        with m.If(o.valid & o.ready):
            m.d.sync += j.eq(j + 1)
            with m.If(end):
                m.d.sync += held.eq(0)
        with m.If(i.valid & i.ready):
            m.d.sync += [held.eq(i.payload.nbytes.any() | i.payload.last), beat.eq(i.payload.data),
                         n.eq(i.payload.nbytes), j.eq(0), last.eq(i.payload.last)]
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


class NarrowDecoder(wiring.Component):
    """A byte-a-cycle engine behind beats of ``width`` bytes: an :class:`Unpacker` in front of
    it and a :class:`Packer` behind it."""

    def __init__(self, engine: wiring.Component, width: int):
        self.engine, self.width = engine, width
        super().__init__({"i_stream": In(byte_stream(width)), "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unpacker = unpacker = Unpacker(self.width)
        m.submodules.engine = engine = self.engine
        m.submodules.packer = packer = Packer(self.width)
        wiring.connect(m, wiring.flipped(self.i_stream), unpacker.i)
        wiring.connect(m, unpacker.o, engine.i_stream)
        eo = engine.o_stream
        m.d.comb += [
            packer.i.valid.eq(eo.valid),
            packer.i.payload.data.eq(eo.payload.data),
            packer.i.payload.n.eq(eo.payload.nbytes),
            packer.i.payload.last.eq(eo.payload.last),
            packer.i.payload.error.eq(eo.payload.error),
            eo.ready.eq(packer.i.ready),
        ]
        wiring.connect(m, packer.o, wiring.flipped(self.o_stream))
        return m


def _varint_bytes(m: Module, value, name: str):
    """The varint of a 64-bit ``value``: ``(bytes, length)``, 80 bits and 1 to 10."""
    length = Signal(range(11), name=f"{name}_len")
    m.d.comb += length.eq(1)
    for g in range(1, 10):
        with m.If(value[7 * g:].any()):
            m.d.comb += length.eq(g + 1)
    out = Cat(*(Cat(value[7 * g:7 * g + 7], length > g + 1) for g in range(10)))
    return out, length


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
        from .protobuf import _BOOL, _SIGNED32, _ZIGZAG32, _ZIGZAG64, _conversion, _tag

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
            out, p = Const(1), fields[k].parent
            while p >= 0:
                out, p = out & present[p], fields[p].parent
            return out

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

        conv = Signal(64)
        with m.Switch(e_conv):
            with m.Case(_SIGNED32):
                m.d.comb += conv.eq(e_val[:32].as_signed())
            with m.Case(_ZIGZAG32):
                m.d.comb += conv.eq(Cat(0, e_val[:31]) ^ e_val[31].replicate(32))
            with m.Case(_ZIGZAG64):
                m.d.comb += conv.eq(Cat(0, e_val[:63]) ^ e_val[63].replicate(64))
            with m.Case(_BOOL):
                m.d.comb += conv.eq(e_val.any())
            with m.Default():
                m.d.comb += conv.eq(e_val)
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
