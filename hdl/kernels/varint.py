"""Protobuf's base-128 varints (LEB128 of a uint64), encoded and decoded a byte a cycle.

A request message is a flags byte (bit 0: zigzag, protobuf's ``sint64``; the other bits are
ignored), then the operation's input. ``encode`` (opcode 0) takes values as u64 LE, 8 bytes
each, and answers their varints, concatenated; ``decode`` (opcode 1) takes varints and answers
their values as u64 LE. With zigzag, ``encode`` zigzags each value (read as an int64) before
encoding it and ``decode`` unzigzags each value it decodes.

The kernel is two registers of 64 bits and a little control:

input
    gathers a value: for ``encode`` a shift register that takes a byte a cycle; for
    ``decode`` each byte's 7 payload bits are written where they belong (bit ``7k`` on for the
    ``k``-th byte), so that each register bit has one source and an enable, and no shifter or
    wide multiplexer is needed. A complete value, or the end of the message, is an *item*; the
    register holds the item until the output takes it.
output
    a shift register sends the item: 8 bytes of a decoded value, or the 1 to 10 bytes of an
    encoded one (7 bits a byte, the top bit set while the rest of the value is not zero). An
    item that ends the message marks its last byte ``last``, or, if the message ended without
    completing a value, is sent as one empty beat with ``last``.

The input takes the next value's bytes while the output sends an item, so a stream of values
goes at one byte a cycle on whichever side has more of them.

Malformed input is answered with every value before the bad one, then the end of the response
with ``error``; the rest of the message is taken and dropped. For ``decode`` a varint is bad
when its 10th byte has the top bit set (longer than 10 bytes) or is above 0x01 (more than 64
bits), or when the message ends inside it; for ``encode`` when the message ends inside a value
(its bytes are not a whole number of 8). An opcode the kernel does not have is answered with an
empty beat with ``error``.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..stream import byte_stream, request_stream

__all__ = ["VarintKernel", "FLAG_ZIGZAG", "MAX_VARINT"]

#: Bit of the flags byte that asks for zigzag (sint64).
FLAG_ZIGZAG = 0x01
#: The most bytes a varint of a uint64 takes.
MAX_VARINT = 10

_ENCODE, _DECODE = 0, 1


class VarintKernel(wiring.Component):
    """Protobuf varints: ``encode`` u64 values into varints, ``decode`` varints into u64 values.

    See the module documentation for the message formats and what malformed input is answered
    with.

    Members
    -------
    i_stream : ``In(request_stream(1))``
        Requests, a byte a beat; the operation is the ``op`` of a message's first beat.
    o_stream : ``Out(byte_stream(1))``
        One response per request message.
    """

    operations = ("encode", "decode")
    width = 1

    #: The response to a message may end 2 x 10 output beats after its last beat is taken
    #: (an item in the output register and one waiting in the input register), each of which
    #: may wait a cycle for ``o_stream.ready`` under the contract's fairness of 2, and the
    #: input can stall as long. The bounded check needs two messages in its depth.
    contract_bounds = {"latency": 40, "depth": 44}

    def __init__(self):
        super().__init__({
            "i_stream": In(request_stream(self.width)),
            "o_stream": Out(byte_stream(self.width)),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream

        # ---- Output register (declared first: the input waits on it) ----------------------
        s_valid = Signal()
        s_data = Signal(64, reset_less=True)
        s_count = Signal(range(8), reset_less=True)  # decode: bytes of the value sent
        s_value, s_last, s_error, s_encode = (Signal(reset_less=True, name=n) for n in
                                              ("s_value", "s_last", "s_error", "s_encode"))
        # The byte offered is the item's last: a flip-flop, worked out a byte ahead, since the
        # input's ready and every input register's enable wait on it (for an encoded value it
        # is a 57-input OR, which in front of them put the kernel at 35 MHz on an iCE40).
        final = Signal(reset_less=True)
        m.d.comb += [
            o.valid.eq(s_valid),
            # encode: the top bit says that more of the value follows.
            o.payload.data.eq(Mux(s_encode, Cat(s_data[:7], ~final), s_data[:8])),
            o.payload.nbytes.eq(s_value),
            o.payload.last.eq(s_last & final),
            o.payload.error.eq(s_error & final),
        ]

        # ---- Input: the message's op and flags, then a value at a time ---------------------
        done = Signal()  # ``value`` holds an item the output has not taken yet
        move = Signal()  # the output takes it this cycle
        # The input waits while an item waits and the output holds another, even in the cycle
        # the output takes its last byte: ``ready`` is then one LUT of flip-flops, not behind
        # ``o_stream.ready`` and ``final`` (on an iCE40 the path from those to every input
        # register's enable held the kernel near 40 MHz). The input loses a cycle only when it
        # is ahead of the output anyway.
        m.d.comb += [
            move.eq(done & (~s_valid | (o.ready & final))),
            i.ready.eq(~done | ~s_valid),
        ]

        in_message = Signal()  # a message's first beat has been taken, its last not yet
        encoding = Signal()  # the message's op, decoded on its first beat
        zigzag = Signal()
        bad = Signal()  # the message is malformed: drop the rest of it
        # Which byte of the current value comes next, one-hot (after a 10th byte that did not
        # end a varint, none: the message is bad by then). One-hot, so that each value bit's
        # enable is one flip-flop and the handshake rather than a counter's comparator.
        place = Signal(MAX_VARINT, init=1)
        value = Signal(64, reset_less=True)

        byte = i.payload.data
        accept = i.valid & i.ready
        first = ~in_message
        known = i.payload.op < len(self.operations)  # read on a message's first beat only
        has_byte = ~i.payload.last | i.payload.nbytes.any()
        # in_message & ~bad, as a flip-flop of its own: it is in every input register's enable.
        active = Signal()
        takes = has_byte & active  # a byte of a value

        # decode: the 10th byte of a varint may only be 0x00 or 0x01.
        overflow = ~encoding & place[MAX_VARINT - 1] & byte[1:].any()
        complete = takes & ~overflow & Mux(encoding, place[7], ~byte[7])
        place_next = Mux(complete, 1, Mux(takes, place << 1, place))
        error_end = Mux(first, ~known, bad | (takes & overflow) | ~place_next[0])

        p_value, p_last, p_error, p_encode, p_zigzag, p_short = (
            Signal(reset_less=True, name=n)
            for n in ("p_value", "p_last", "p_error", "p_encode", "p_zigzag", "p_short"))
        item = accept & (complete | i.payload.last)
        with m.If(accept):
            m.d.sync += [
                in_message.eq(~i.payload.last),
                place.eq(Mux(i.payload.last, 1, place_next)),
                bad.eq(~i.payload.last & Mux(first, ~known, bad | (takes & overflow))),
                active.eq(~i.payload.last & Mux(first, known, ~bad & ~(takes & overflow))),
            ]
            with m.If(first):
                m.d.sync += [encoding.eq(i.payload.op == _ENCODE),
                             zigzag.eq(has_byte & byte[0] & FLAG_ZIGZAG)]
        # encode: whether the value's varint is one byte (below 0x80; with zigzag, from -64 to
        # 63: bits 6 to 63 all equal to bit 7 of the first byte, ``top``), kept up to date a
        # byte at a time so that the output need not look at 57 bits to know it.
        small, small_zz, top = Signal(), Signal(), Signal()
        small_next = Mux(place[0], ~byte[7], small & (byte == 0))
        small_zz_next = Mux(place[0], byte[6] == byte[7], small_zz & (byte == top.replicate(8)))
        with m.If(accept & takes & encoding):
            m.d.sync += [
                value.eq(Cat(value[8:], byte)),
                small.eq(small_next), small_zz.eq(small_zz_next),
                top.eq(Mux(place[0], byte[7], top)),
            ]
        # decode: bit j comes from bit j % 7 of the (j // 7)-th byte; the first byte clears the
        # bits above its own.
        for j in range(64):
            with m.If(accept & takes & ~encoding & place[j // 7]):
                m.d.sync += value[j].eq(byte[j % 7])
            with m.Elif(accept & takes & ~encoding & place[0]):
                m.d.sync += value[j].eq(0)
        with m.If(item):
            m.d.sync += [
                p_value.eq(complete),
                p_last.eq(i.payload.last),
                p_error.eq(i.payload.last & error_end),
                p_encode.eq(encoding),
                p_zigzag.eq(zigzag),
                p_short.eq(Mux(zigzag, small_zz_next, small_next)),
            ]
        with m.If(item):
            m.d.sync += done.eq(1)
        with m.Elif(move):
            m.d.sync += done.eq(0)

        # ---- Into the output register, zigzagged if asked ---------------------------------
        sign, low = value[63], value[0]
        zig = Cat(sign, value[:63] ^ sign.replicate(63))  # (n << 1) ^ (n >> 63)
        unzig = Cat(value[1:] ^ low.replicate(63), low)  # (z >> 1) ^ -(z & 1)
        with m.If(move):
            m.d.sync += [
                s_valid.eq(1),
                s_data.eq(Mux(p_zigzag, Mux(p_encode, zig, unzig), value)),
                s_count.eq(0),
                s_value.eq(p_value), s_last.eq(p_last), s_error.eq(p_error),
                s_encode.eq(p_encode),
                final.eq(~p_value | (p_encode & p_short)),
            ]
        with m.Elif(s_valid & o.ready):
            with m.If(final):
                m.d.sync += s_valid.eq(0)
            with m.Else():
                m.d.sync += [
                    s_data.eq(Mux(s_encode, s_data >> 7, s_data >> 8)),
                    s_count.eq(s_count + 1),
                    final.eq(Mux(s_encode, ~s_data[14:].any(), s_count == 6)),
                ]

        return m
