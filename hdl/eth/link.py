"""Adapters between the link bridge and UDP datagrams: frames without COBS, several to a datagram.

Over UDP (see the UDP section of ``hdl/link/protocol.py``) a datagram holds one or more whole
frames back to back (header, payload, CRC-32C; no COBS, no delimiter), each frame's length field
(header bytes 8-9, little-endian) saying where the next begins. The bridge
(``hdl/link/bridge.py``) speaks the streams of ``hdl/link/cobs.py``: it takes decoded frames as
:data:`~hdl.link.cobs.decoded_layout` (bytes, then an end beat) and gives its responses as
:data:`~hdl.link.cobs.frame_layout` (bytes, ``last`` on each frame's final byte). The two
components here put the bridge on the UDP endpoint (``hdl/eth/udp.py``) in place of the COBS
coder pair:

* :class:`DatagramFrames`: received datagram payloads -> frames for the bridge;
* :class:`FramesDatagram`: the bridge's response frames -> reply datagram payloads, small frames
  packed together.

Both agree with the host's ``offload.link.codec.split_datagram`` and ``pack_datagrams``.
"""

from amaranth.hdl import Array, Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..link import protocol as p
from ..link.cobs import decoded_layout, frame_layout

__all__ = ["DatagramFrames", "FramesDatagram", "datagram_in_layout", "datagram_out_layout"]

#: A received datagram's payload, as ``UdpEndpoint.o_datagram`` gives it: ``error`` is set on
#: the last beat of a truncated datagram.
datagram_in_layout = data.StructLayout({"data": 8, "last": 1, "error": 1})

#: A reply datagram's payload, as ``UdpEndpoint.i_datagram`` takes it.
datagram_out_layout = data.StructLayout({"data": 8, "last": 1})

#: Bytes of a frame besides its payload.
FRAME_OVERHEAD = p.HEADER_SIZE + p.CRC_SIZE
#: Offset of the payload length (little-endian, two bytes) in the header.
LENGTH_OFFSET = p.HEADER_SIZE - 2


class DatagramFrames(wiring.Component):
    """Splits received datagrams into the link's frames, for the bridge.

    Each datagram payload byte from ``i_stream`` goes out on ``o_stream`` as a data beat
    (``end`` = 0), in order; nothing is buffered. Frames are found by counting: a frame is
    ``HEADER_SIZE + length + CRC_SIZE`` bytes, ``length`` read from its bytes 8-9 as they pass.

    * After a frame's final byte comes an end beat with ``bad`` = 0, and the frame counts in
      ``frames`` -- unless that byte is also the datagram's last and carries ``error`` (the
      endpoint cut the datagram short), when the end beat has ``bad`` = 1.
    * A datagram whose last byte comes inside a frame (the length runs past the end of the
      datagram, or fewer than a header and a CRC are left) has that frame's bytes passed and
      then an end beat with ``bad`` = 1; the frame counts in ``bad_frames``. The frames before
      it have already gone out whole and good. This is ``split_datagram``'s "frames before it
      are taken, it and the rest dropped": since ``last`` is on a datagram's final byte, no byte
      follows a frame that does not fit, and the bridge drops the bad frame.
    * A frame whose size (known from its length field) is over ``max_frame`` is let through as
      any other (the bridge answers it STATUS_TOO_LONG) and counted in ``long_frames`` when its
      length byte passes.
    * The next datagram starts a new frame, whatever the previous one left. An empty datagram
      gives no beat in and none out.

    A byte is taken each cycle that the output is free, except that an end beat takes a cycle
    of its own: the cycle after a frame's final byte goes out, no byte is taken.

    Parameters
    ----------
    max_frame : int
        The largest frame (header, payload and CRC) not counted as too long; by default that of
        a datagram of ``protocol.MAX_DATAGRAM`` bytes.

    Members
    -------
    i_stream : ``In(stream.Signature(datagram_in_layout))``
        Datagram payloads, ``last`` on each one's final byte, ``error`` with ``last`` if cut.
    o_stream : ``Out(stream.Signature(decoded_layout))``
        Frame bytes, and one end beat per frame, ``bad`` if the frame was cut.
    frames, bad_frames, long_frames : ``Out(32)``
        Frames ended good, frames ended bad (cut), and frames over ``max_frame``.
    """

    i_stream: In(stream.Signature(datagram_in_layout))
    o_stream: Out(stream.Signature(decoded_layout))
    frames: Out(32)
    bad_frames: Out(32)
    long_frames: Out(32)

    def __init__(self, max_frame: int = p.MAX_DATAGRAM):
        if not isinstance(max_frame, int) or max_frame < FRAME_OVERHEAD:
            raise ValueError(f"max_frame must be an integer of at least {FRAME_OVERHEAD}, "
                             f"not {max_frame!r}")
        self.max_frame = max_frame
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream

        pos = Signal(17)  # index in the current frame of the next byte
        length_lo = Signal(8)
        length = Signal(16)
        end_pending = Signal()  # an end beat waits to follow the byte in the output register
        end_bad = Signal()

        m.d.comb += i.ready.eq(~end_pending & (~o.valid | o.ready))
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(end_pending & (~o.valid | o.ready)):
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(0),
                o.payload.end.eq(1),
                o.payload.bad.eq(end_bad),
                end_pending.eq(0),
            ]

        with m.If(i.valid & i.ready):
            byte = i.payload.data
            # The frame's final byte: pos == HEADER_SIZE + length + CRC_SIZE - 1, which is at
            # least 13, so by then both length bytes have been read.
            frame_done = pos == length + (FRAME_OVERHEAD - 1)
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(byte),
                o.payload.end.eq(0),
                o.payload.bad.eq(0),
            ]
            with m.If(pos == LENGTH_OFFSET):
                m.d.sync += length_lo.eq(byte)
            with m.If(pos == LENGTH_OFFSET + 1):
                m.d.sync += length.eq(Cat(length_lo, byte))
                with m.If(Cat(length_lo, byte) > self.max_frame - FRAME_OVERHEAD):
                    m.d.sync += self.long_frames.eq(self.long_frames + 1)
            bad = i.payload.last & (~frame_done | i.payload.error)
            with m.If(frame_done | i.payload.last):
                m.d.sync += [pos.eq(0), end_pending.eq(1), end_bad.eq(bad)]
                with m.If(bad):
                    m.d.sync += self.bad_frames.eq(self.bad_frames + 1)
                with m.Else():
                    m.d.sync += self.frames.eq(self.frames + 1)
            with m.Else():
                m.d.sync += pos.eq(pos + 1)

        return m


class FramesDatagram(wiring.Component):
    """Packs the bridge's response frames into reply datagrams.

    Frames from ``i_stream`` go out on ``o_stream`` byte for byte, in order; what this adds is
    ``last``, which ends a datagram. Consecutive frames share a datagram while they fit in
    ``max_datagram`` bytes and follow one another closely:

    * The first ``HEADER_SIZE`` bytes of each frame are gathered in registers before any of them
      goes out, so that its size (``HEADER_SIZE + length + CRC_SIZE``, from its length field)
      is known. The rest of the frame then passes straight through, except its final byte,
      which is held back.
    * A held byte waits for the next frame. If that frame's first byte is offered on
      ``i_stream`` within ``linger`` cycles after the cycle the held byte was taken in (it is
      then taken at once) and, once its header is in, its size fits in what is left of
      ``max_datagram``, the held byte goes out without ``last`` and the frame joins the
      datagram. Otherwise the held byte is offered with ``last`` from the cycle after those
      ``linger`` (at once if ``linger`` is 0), and the frame (if any) starts the next
      datagram.

    So every datagram is at most ``max_datagram`` bytes and holds whole frames only, as
    ``split_datagram`` reads them, provided that the input is as the bridge makes it: each
    frame at least ``HEADER_SIZE`` bytes, its length field true, and at most ``max_datagram``
    bytes. Guards, for input that is not: a frame over ``max_datagram`` bytes goes out as a
    datagram of its own (which the UDP endpoint drops and counts); a frame of at most
    ``HEADER_SIZE`` bytes goes out as a datagram of its own. A frame whose length field is
    wrong may make a datagram too long or split wrongly; the bridge makes none.

    Rate: the bytes of a frame after its header pass at a byte per cycle; each frame costs
    about ``HEADER_SIZE + 1`` cycles more on the output (its header gathered, then sent from
    the registers, the held byte before it), and a frame that ends the output's traffic waits
    ``linger`` cycles before its final byte goes out.

    Parameters
    ----------
    max_datagram : int
        The largest datagram payload, bytes (the UDP endpoint's ``max_datagram``).
    linger : int
        Cycles a frame's final byte waits for the next frame to start.

    Members
    -------
    i_stream : ``In(stream.Signature(frame_layout))``
        Response frames, ``last`` on each frame's final byte.
    o_stream : ``Out(stream.Signature(datagram_out_layout))``
        Datagram payloads, ``last`` on each one's final byte.
    frames, datagrams : ``Out(32)``
        Frames taken whole, datagrams ended.
    """

    i_stream: In(stream.Signature(frame_layout))
    o_stream: Out(stream.Signature(datagram_out_layout))
    frames: Out(32)
    datagrams: Out(32)

    def __init__(self, max_datagram: int = p.MAX_DATAGRAM, linger: int = 16):
        if not isinstance(max_datagram, int) or not FRAME_OVERHEAD <= max_datagram < 1 << 16:
            raise ValueError(f"max_datagram must be an integer from {FRAME_OVERHEAD} to 65535, "
                             f"not {max_datagram!r}")
        if not isinstance(linger, int) or linger < 0:
            raise ValueError(f"linger must be a non-negative integer, not {linger!r}")
        self.max_datagram = max_datagram
        self.linger = linger
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream

        header = Array(Signal(8, name=f"header{n}") for n in range(p.HEADER_SIZE))
        count = Signal(range(p.HEADER_SIZE + 1))  # header bytes gathered
        short = Signal()  # the gathered frame ended inside its header: count is its size
        sent = Signal(range(p.HEADER_SIZE))  # gathered bytes sent
        held = Signal()  # a frame's final byte is held back
        held_data = Signal(8)
        join = Signal()  # the gathered frame joins the held byte's datagram
        gathered = Signal()  # a frame's header (or a short frame) is gathered
        used = Signal(17)  # bytes of the current datagram, held byte included
        wait = Signal(range(max(self.linger, 1)))  # cycles the held byte has waited

        new_length = Cat(header[LENGTH_OFFSET], i.payload.data)
        fits = used + new_length + FRAME_OVERHEAD <= self.max_datagram

        def end_datagram():
            m.d.sync += self.datagrams.eq(self.datagrams + 1)

        with m.FSM():
            with m.State("GATHER"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    m.d.sync += [header[count].eq(i.payload.data), count.eq(count + 1)]
                    with m.If(i.payload.last | (count == p.HEADER_SIZE - 1)):
                        m.d.sync += [short.eq(i.payload.last), gathered.eq(1), sent.eq(0)]
                        m.d.sync += join.eq(held & ~i.payload.last & fits)
                        with m.If(held):
                            m.next = "HELD"
                        with m.Else():
                            m.next = "HEADER"
                with m.Elif(held & (count == 0)):
                    with m.If(wait == self.linger - 1):
                        m.d.sync += [join.eq(0), gathered.eq(0)]
                        m.next = "HELD"
                    with m.Else():
                        m.d.sync += wait.eq(wait + 1)

            with m.State("HELD"):
                m.d.comb += [
                    o.valid.eq(1),
                    o.payload.data.eq(held_data),
                    o.payload.last.eq(~join),
                ]
                with m.If(o.ready):
                    m.d.sync += held.eq(0)
                    with m.If(~join):
                        m.d.sync += used.eq(0)
                        end_datagram()
                    with m.If(gathered):
                        m.next = "HEADER"
                    with m.Else():
                        m.next = "GATHER"

            with m.State("HEADER"):
                final = short & (sent == count - 1)
                m.d.comb += [
                    o.valid.eq(1),
                    o.payload.data.eq(header[sent]),
                    o.payload.last.eq(final),
                ]
                with m.If(o.ready):
                    m.d.sync += [sent.eq(sent + 1), used.eq(used + 1)]
                    with m.If(final):
                        m.d.sync += [
                            used.eq(0), count.eq(0), gathered.eq(0),
                            self.frames.eq(self.frames + 1),
                        ]
                        end_datagram()
                        m.next = "GATHER"
                    with m.Elif(sent == p.HEADER_SIZE - 1):
                        m.d.sync += [count.eq(0), gathered.eq(0)]
                        m.next = "PASS"

            with m.State("PASS"):
                m.d.comb += [
                    o.valid.eq(i.valid & ~i.payload.last),
                    o.payload.data.eq(i.payload.data),
                    o.payload.last.eq(0),
                    i.ready.eq(i.payload.last | o.ready),
                ]
                with m.If(i.valid & i.ready):
                    m.d.sync += used.eq(used + 1)
                    with m.If(i.payload.last):
                        m.d.sync += [
                            held.eq(1), held_data.eq(i.payload.data), wait.eq(0),
                            self.frames.eq(self.frames + 1),
                        ]
                        if self.linger:
                            m.next = "GATHER"
                        else:  # no waiting: the byte ends its datagram
                            m.d.sync += [join.eq(0), gathered.eq(0)]
                            m.next = "HELD"

        return m
