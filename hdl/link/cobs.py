"""COBS framing of the link: a frame's bytes with no zero in them, then one 0x00.

Consistent Overhead Byte Stuffing splits a frame at its zero bytes into blocks. Each block is
sent as a code byte ``c`` (1 to 255) followed by ``c - 1`` non-zero data bytes; a block with
``c < 255`` stands for its data and one zero byte, except that the zero after the frame's last
block is not part of the frame. A run of 254 non-zero bytes makes a block of code 255 with no
zero after it. The encoding here is byte for byte that of the ``cobs`` package on PyPI
(``cobs.cobs.encode``), which the host side uses: a frame that ends with a run of exactly 254
non-zero bytes ends with that 255 block, with no empty block after it.
"""

from amaranth.hdl import Cat, Module, Mux, ResetSignal, Signal
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
        rst = ResetSignal()

        # Two blocks of 256 bytes, so a buffer index is the top address bit. A block's data
        # bytes are at 1 to 254 in its buffer: the address of the next byte of a block is then
        # the block's code byte should the block end before that byte.
        # Read through ram.read_port: the sender reads buffer ~fbuf and the gatherer writes
        # buffer fbuf (below), so no byte is read as it is written.
        m.submodules.blocks = blocks = Memory(shape=8, depth=512, init=[], attrs=NO_RW_CHECK)
        wr = blocks.write_port()
        rd = read_port(m, blocks, "rd")

        # The sender's states (see below), also what comes after a block: more blocks of the
        # frame (CODE), the delimiter, or an empty block and the delimiter (TAIL).
        CODE, DATA, TAIL, DELIMIT = 0, 1, 2, 3

        # A block ends in the gatherer, in buffer ``fbuf``, and is handed over to the sender:
        # its code byte to ``code``, what comes after it to ``after``, and the gatherer goes on
        # in the other buffer. The sender sends the block from buffer ``~fbuf``. While the sender
        # holds a block it has not finished sending, a block that ends waits in the gatherer
        # (``parked``, with its code in ``count`` and what comes after in ``g_after``) until the
        # sender's block leaves: the gatherer takes no byte then, having no free buffer.
        # Registers that mean nothing until a block is handed over need no reset.
        held = Signal()  # the sender holds a block, in ~fbuf, from its code byte to its last
        parked = Signal()
        code = Signal(8, reset_less=True)
        after = Signal(2, reset_less=True)
        g_after = Signal(2, reset_less=True)
        release = Signal()  # the sender's block leaves with this beat
        handover = Signal()

        # Gathering. ``count`` is the address of the next byte in the block (so the block's code
        # byte as it stands), set to 1 by reset or a handover, a single reset of its register.
        i = self.i_stream
        fbuf = Signal()
        count = Signal(8, init=1, reset_less=True)
        take, zero, end = Signal(), Signal(), Signal()
        # count + 1 past a non-zero byte, else count: what count becomes after a byte, and the
        # code of a block handed over as it ends (at a zero byte, count) or from where it
        # waits (count, there being no byte then); a single adder with no multiplexer.
        inc = (count + (~zero & ~parked))[:8]
        accept = ~held | release
        m.d.comb += [
            i.ready.eq(~parked),
            take.eq(i.valid & i.ready),
            zero.eq(i.payload.data == 0),
            # The 254th non-zero byte (at 254) ends a block of code 255; count is never 255
            # while the gatherer takes a byte.
            end.eq(zero | i.payload.last | count[1:].all()),
            handover.eq((parked | (take & end)) & accept),
            # A zero byte is written too: it ends its block, so nothing reads it.
            wr.en.eq(take),
            wr.addr.eq(Cat(count, fbuf)),
            wr.data.eq(i.payload.data),
        ]
        with m.If(rst | handover):
            m.d.sync += count.eq(1)
        with m.Elif(take & ~zero):
            m.d.sync += count.eq(inc)
        with m.If(take & end):
            m.d.sync += g_after.eq(Mux(i.payload.last, Mux(zero, TAIL, DELIMIT), CODE))
            with m.If(~accept):
                m.d.sync += parked.eq(1)
        with m.If(handover):
            m.d.sync += [
                fbuf.eq(~fbuf),
                parked.eq(0),
                # A parked block's code is count; a block that ends now has count (at a zero
                # byte) or count + 1 (at a non-zero byte, the last or the 254th): inc, each.
                code.eq(inc),
                after.eq(Mux(parked, g_after,
                             Mux(i.payload.last, Mux(zero, TAIL, DELIMIT), CODE))),
            ]
        with m.If(handover):
            m.d.sync += held.eq(1)
        with m.Elif(release):
            m.d.sync += held.eq(0)

        # Sending: the block's code byte (state CODE, once it holds a block), its data bytes
        # (DATA), and after a frame's last block the empty block (TAIL) and the delimiter
        # (DELIMIT). The next block may be handed over while it sends the last two.
        o = self.o_stream
        state = Signal(2, init=CODE)
        in_block = ~state[1]
        out = Signal(8, reset_less=True)  # means nothing while o.valid is low
        m.d.comb += o.payload.eq(out)
        # The address of the next data byte to read: the read port holds the one before it
        # while it waits for the output. It is 1 in state CODE.
        ptr = Signal(8, init=1, reset_less=True)
        advance = ~o.valid | o.ready
        emit = advance & (~in_block | state[0] | held)
        # The beat leaving is the block's last: its code byte (code 1), or the data byte at
        # code - 1.
        m.d.comb += [
            release.eq(emit & in_block & (ptr == code)),
            rd.addr.eq(Cat(ptr, ~fbuf)),
            rd.en.eq(advance),
        ]

        with m.If(advance):
            m.d.sync += [
                o.valid.eq(emit),
                # TAIL sends 1, DELIMIT 0.
                out.eq(Mux(state[1], ~state[0], Mux(state[0], rd.data, code))),
            ]
        with m.If(rst | release):
            m.d.sync += ptr.eq(1)
        with m.Elif(emit & in_block):
            m.d.sync += ptr.eq(ptr + 1)
        with m.If(emit):
            with m.If(~in_block):
                m.d.sync += state.eq(Mux(state[0], CODE, DELIMIT))
            with m.Elif(release):
                m.d.sync += state.eq(after)
            with m.Else():
                m.d.sync += state.eq(DATA)

        return m
