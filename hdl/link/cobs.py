"""COBS framing of the link: a frame's bytes with no zero in them, then one 0x00.

Consistent Overhead Byte Stuffing splits a frame at its zero bytes into blocks. Each block is
sent as a code byte ``c`` (1 to 255) followed by ``c - 1`` non-zero data bytes; a block with
``c < 255`` stands for its data and one zero byte, except that the zero after the frame's last
block is not part of the frame. A run of 254 non-zero bytes makes a block of code 255 with no
zero after it. The encoding here is byte for byte that of the ``cobs`` package on PyPI
(``cobs.cobs.encode``), which the host side uses: a frame that ends with a run of exactly 254
non-zero bytes ends with that 255 block, with no empty block after it.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .ram import NO_RW_CHECK, read_port

__all__ = ["CobsDecoder", "CobsEncoder", "decoded_layout", "frame_layout"]

#: Payload of the decoder's output. A beat either carries a decoded byte in ``data`` or, with
#: ``end`` set, marks the end of a frame (its ``data`` is then meaningless); ``bad`` is set on
#: an end beat when the frame did not decode consistently.
decoded_layout = data.StructLayout({"data": 8, "end": 1, "bad": 1})

#: Payload of the encoder's input: a frame's bytes, ``last`` set on its final byte.
frame_layout = data.StructLayout({"data": 8, "last": 1})

#: Most data bytes in one block.
BLOCK_SIZE = 254


class CobsDecoder(wiring.Component):
    """Streaming COBS decoder.

    Each input byte gives at most one output beat, one cycle later: a data byte gives itself, a
    code byte gives the zero that the previous block stood for (or nothing, at the start of a
    frame or after a 255 block), and the 0x00 delimiter gives an end beat. So a byte is taken
    every cycle that the output is free, and nothing is buffered.

    A frame is flagged ``bad`` at its end when the delimiter came inside a block, that is, the
    frame was cut short. A delimiter with no byte since the previous one (an empty frame, as a
    host sends to flush the line) gives no end beat at all.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        COBS-encoded bytes, frames delimited by 0x00.
    o_stream : ``Out(stream.Signature(decoded_layout))``
        Decoded bytes, and one end beat per frame.
    """

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(decoded_layout))

    def elaborate(self, platform):
        m = Module()

        # What the code byte of the current block said, less the data bytes since: 1 when the
        # next byte is a code byte (the block has no data byte to come). Holding the code byte
        # itself instead of one less saves a subtractor.
        remain = Signal(8, init=1)
        zero_pending = Signal()  # the current block stands for a trailing zero
        in_frame = Signal()
        # The output beat's payload, which means nothing while ``valid`` is low, so it needs no
        # reset: the flip-flops' reset input is then free to clear ``data`` for a code byte.
        out = Signal(decoded_layout, reset_less=True)

        i, o = self.i_stream, self.o_stream
        m.d.comb += [i.ready.eq(~o.valid | o.ready), o.payload.eq(out)]
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)

        at_code = remain == 1
        with m.If(i.valid & i.ready):
            byte = i.payload
            # Whatever the byte, the output beat (if any) is taken: a zero for a code byte (the
            # zero its block stands for), else the byte; the end beat's data is meaningless.
            with m.If(at_code):
                m.d.sync += out.data.eq(0)
            with m.Else():
                m.d.sync += out.data.eq(byte)
            m.d.sync += [out.end.eq(byte == 0), out.bad.eq(~at_code & (byte == 0))]
            with m.If(byte == 0):
                m.d.sync += [o.valid.eq(in_frame), remain.eq(1), zero_pending.eq(0),
                             in_frame.eq(0)]
            with m.Elif(at_code):
                m.d.sync += [
                    remain.eq(byte),
                    zero_pending.eq(byte != 0xFF),
                    in_frame.eq(1),
                    o.valid.eq(zero_pending),
                ]
            with m.Else():
                m.d.sync += [remain.eq(remain - 1), o.valid.eq(1)]

        return m


class CobsEncoder(wiring.Component):
    """COBS encoder with one block of lookahead.

    A block's code byte depends on where the block ends, up to 254 bytes later, so bytes are
    gathered into a block buffer until the block ends (at a zero byte, the 254th non-zero byte,
    or the frame's last byte) before the block is sent: its code byte, its data, and after the
    frame's last block a 0x00 delimiter (preceded by an empty block when the frame ends with a
    zero). There are two block buffers, so the next block is gathered while one is sent: input
    is taken a byte per cycle as long as the output keeps up, and the output runs at a byte per
    cycle with no gap between blocks. The latency is one block.

    Frames must have at least one byte (``last`` marks a byte; there is no empty frame).

    Members
    -------
    i_stream : ``In(stream.Signature(frame_layout))``
        Frame bytes, ``last`` on the final byte of each frame.
    o_stream : ``Out(stream.Signature(8))``
        COBS-encoded bytes, each frame followed by 0x00.
    """

    i_stream: In(stream.Signature(frame_layout))
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()

        # Two blocks of 256 bytes, so a buffer index is the top address bit. A block's data
        # bytes are at 1 to 254 in its buffer, so that the address of its next byte is also its
        # code byte were it to end before that byte.
        # Read through ram.read_port: the block being sent is never the one being gathered
        # once the sender reads it (it waits for the block to be full).
        m.submodules.blocks = blocks = Memory(shape=8, depth=512, init=[], attrs=NO_RW_CHECK)
        wr = blocks.write_port()
        rd = read_port(m, blocks, "rd")

        # Each buffer holds a block waiting to be sent, with its code byte and what follows it:
        # nothing (more blocks of the frame), a delimiter, or an empty block and a delimiter.
        # All but ``full`` mean nothing while a buffer is not full, so they need no reset.
        full = [Signal(name=f"full{b}") for b in range(2)]
        code = [Signal(8, reset_less=True, name=f"code{b}") for b in range(2)]
        final = [Signal(reset_less=True, name=f"final{b}") for b in range(2)]
        empty_tail = [Signal(reset_less=True, name=f"empty_tail{b}") for b in range(2)]

        # Gathering.
        i = self.i_stream
        fbuf = Signal()
        count = Signal(8, init=1)  # address of the next byte in the block
        inc = count + 1
        take = Signal()
        m.d.comb += [
            i.ready.eq(~Mux(fbuf, full[1], full[0])),
            take.eq(i.valid & i.ready),
            # A zero byte is written too (it ends the block, so nothing reads it).
            wr.en.eq(take),
            wr.addr.eq(Cat(count, fbuf)),
            wr.data.eq(i.payload.data),
        ]
        with m.If(take):
            last = i.payload.last
            zero = i.payload.data == 0
            for b in range(2):
                with m.If(fbuf == b):
                    m.d.sync += code[b].eq(Mux(zero, count, inc))
            # The 254th non-zero byte (at 254) ends a block of code 255.
            with m.If(zero | last | (count == BLOCK_SIZE)):
                m.d.sync += [count.eq(1), fbuf.eq(~fbuf)]
                for b in range(2):
                    with m.If(fbuf == b):
                        m.d.sync += [full[b].eq(1), final[b].eq(last),
                                     empty_tail[b].eq(last & zero)]
            with m.Else():
                m.d.sync += count.eq(inc)

        # Sending.
        o = self.o_stream
        out = Signal(8, reset_less=True)  # meaningless while o.valid is low
        m.d.comb += o.payload.eq(out)
        ebuf = Signal()
        # Address of the next byte to read; the read port holds the byte before it.
        ptr = Signal(8, init=1)
        e_code = Mux(ebuf, code[1], code[0])
        e_full = Mux(ebuf, full[1], full[0])
        e_final = Mux(ebuf, final[1], final[0])
        e_tail = Mux(ebuf, empty_tail[1], empty_tail[0])
        advance = ~o.valid | o.ready
        # The byte a block's last beat (its code byte, or the data byte at code - 1) leaves.
        done = ptr == e_code
        m.d.comb += [rd.addr.eq(Cat(ptr, ebuf)), rd.en.eq(advance)]
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)

        def emit(byte):
            m.d.sync += [o.valid.eq(1), out.eq(byte), ptr.eq(ptr + 1)]

        def block_sent():
            m.d.sync += [ptr.eq(1), ebuf.eq(~ebuf)]
            for b in range(2):
                with m.If(ebuf == b):
                    m.d.sync += full[b].eq(0)
            with m.If(~e_final):
                m.next = "CODE"
            with m.Elif(e_tail):
                m.next = "TAIL"
            with m.Else():
                m.next = "DELIMIT"

        with m.FSM():
            with m.State("CODE"):
                with m.If(e_full & advance):
                    emit(e_code)
                    with m.If(done):
                        block_sent()
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(advance):
                    emit(rd.data)
                    with m.If(done):
                        block_sent()
            with m.State("TAIL"):
                with m.If(advance):
                    m.d.sync += [o.valid.eq(1), out.eq(1)]
                    m.next = "DELIMIT"
            with m.State("DELIMIT"):
                with m.If(advance):
                    m.d.sync += [o.valid.eq(1), out.eq(0)]
                    m.next = "CODE"

        return m
