"""A byte-wide Ethernet MAC: one byte a cycle on a GMII-like interface, in one clock domain.

:class:`MacRx` turns what a PHY receives (preamble, SFD, frame, FCS) into a stream of the good
frames, and :class:`MacTx` turns a stream of frames into what a PHY sends. Both streams carry
a frame from its destination MAC address through its payload, one byte a beat, ``last`` on
its final byte, without the FCS (:data:`frame_layout`, the layout of
:mod:`hdl.link.cobs`'s frames). At 1 Gbps the domain runs at 125 MHz; the crossing to the
core's clock is not part of this module.

Both keep frames in a packet buffer (a ``Memory`` used as a ring of bytes) and a FIFO of the
lengths of the frames in it: a frame's bytes are written at the ring's write pointer plus the
frame's count so far, and the frame is committed (its length pushed, the write pointer moved
past it) only when it is whole and good; a frame that is dropped is forgotten by not moving
the write pointer.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .crc32 import INIT, RESIDUE, crc_byte_step

__all__ = ["MacRx", "MacTx", "frame_layout", "PREAMBLE", "SFD", "MIN_FRAME", "mac_bytes"]

#: Payload of both MACs' streams: a frame's bytes, ``last`` on its final byte.
frame_layout = data.StructLayout({"data": 8, "last": 1})

PREAMBLE = 0x55
SFD = 0xD5
#: The shortest frame on the wire, FCS included.
MIN_FRAME = 64
BROADCAST = 0xFFFF_FFFF_FFFF


def _packet_buffer(m: Module, depth: int, max_len: int, max_frames: int):
    """The packet buffer both MACs keep: a ring of ``depth`` bytes (its write and read ports)
    and a FIFO of the lengths of up to ``max_frames`` frames of at most ``max_len`` bytes."""
    m.submodules.buffer = buf = Memory(shape=8, depth=depth, init=[])
    m.submodules.lengths = lengths = SyncFIFO(width=len(Signal(range(max_len + 1))),
                                              depth=max_frames)
    return buf.write_port(), buf.read_port(), lengths


def mac_bytes(mac: int) -> bytes:
    """A MAC address given as a 48-bit integer (``0x020000000001`` is 02:00:00:00:00:01), as
    the six bytes sent on the wire, first byte first."""
    return mac.to_bytes(6, "big")


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, not {value!r}")


def _check_buffer(buffer_bytes, largest: int) -> None:
    _check_int("buffer_bytes", buffer_bytes, 1)
    if buffer_bytes & (buffer_bytes - 1):
        raise ValueError(f"buffer_bytes must be a power of 2, not {buffer_bytes!r}")
    if buffer_bytes < largest:
        raise ValueError(f"buffer_bytes ({buffer_bytes}) must hold the longest frame "
                         f"({largest} bytes)")


class MacRx(wiring.Component):
    """Ethernet receiver: GMII-like bytes in, good frames out.

    A frame starts when ``rx_dv`` rises: any number of preamble bytes (0x55), then the SFD
    (0xD5); a byte other than these before the SFD makes the MAC ignore the rest of the frame
    (uncounted). The frame is the bytes after the SFD while ``rx_dv`` stays high; its last four
    are the FCS. It is forwarded on ``o_stream`` only if it is good, and otherwise dropped and
    counted under the first reason that applies, in this order:

    ``rx_errors``: ``rx_er`` was high during it; ``too_long``: more than ``max_frame`` bytes with
    FCS (jumbo frames); ``runts``: fewer than 64 bytes with FCS; ``bad_fcs``: the FCS is wrong;
    ``other_mac``: the destination is neither ``mac`` nor broadcast; ``overflow``: the packet
    buffer had no room for it (or held ``max_frames`` frames already).

    A good frame is counted in ``frames_ok`` and is then put on ``o_stream`` from its
    destination MAC through its payload (with any padding: the MAC cannot know the upper
    layer's length), without the FCS. Frames are stored whole in the packet buffer before they
    are forwarded, so backpressure on ``o_stream`` is absorbed by the buffer, and the output is
    at most one beat per cycle with a cycle between frames. A frame needs room for all its
    bytes (FCS included) while it arrives; frames that find the buffer full are dropped whole.

    The inputs are registered once before use; no input is combinationally connected to an
    output.

    Parameters
    ----------
    mac : int
        This station's MAC address, 48 bits, first byte on the wire most significant.
    max_frame : int
        The longest frame accepted, FCS included (1518: 1500 bytes of payload, no VLAN tag).
    buffer_bytes : int
        Size of the packet buffer, a power of 2 at least ``max_frame``.
    max_frames : int
        How many frames the buffer can hold at once (the depth of the length FIFO).

    Members
    -------
    rx_dv, rx_er : ``In(1)``
        GMII receive data valid and receive error, sampled each cycle.
    rxd : ``In(8)``
        GMII receive data.
    o_stream : ``Out(stream.Signature(frame_layout))``
        Good frames, without FCS.
    frames_ok, bad_fcs, runts, too_long, other_mac, overflow, rx_errors : ``Out(32)``
        Frame counters, wrapping.
    """

    COUNTERS = ("frames_ok", "bad_fcs", "runts", "too_long", "other_mac", "overflow",
                "rx_errors")

    def __init__(self, mac: int, max_frame: int = 1518, *, buffer_bytes: int = 4096,
                 max_frames: int = 64):
        self._MustUse__silence = True
        _check_int("mac", mac, 0)
        if mac > BROADCAST:
            raise ValueError(f"mac must be a 48-bit address, not {mac:#x}")
        _check_int("max_frame", max_frame, MIN_FRAME)
        _check_buffer(buffer_bytes, max_frame)
        _check_int("max_frames", max_frames, 1)
        self.mac = mac
        self.max_frame = max_frame
        self.buffer_bytes = buffer_bytes
        self.max_frames = max_frames
        members = {
            "rx_dv": In(1), "rx_er": In(1), "rxd": In(8),
            "o_stream": Out(stream.Signature(frame_layout)),
        }
        members.update({name: Out(32) for name in self.COUNTERS})
        super().__init__(members)
        self._MustUse__silence = False

    def elaborate(self, platform):
        m = Module()
        depth = self.buffer_bytes
        abits = depth.bit_length() - 1
        max_frame = self.max_frame

        wr, rd, lengths = _packet_buffer(m, depth, max_frame, self.max_frames)

        # Inputs, registered.
        dv, er, d = Signal(), Signal(), Signal(8)
        m.d.sync += [dv.eq(self.rx_dv), er.eq(self.rx_er), d.eq(self.rxd)]

        # The ring: committed frames from rd_ptr to wr_base, the frame being received from
        # wr_base to wr_ptr. ``space`` is the room after wr_ptr, kept up to date a byte at a
        # time rather than computed from the pointers (which would be a long carry path).
        wr_base = Signal(abits)
        wr_ptr = Signal(abits)
        rd_ptr = Signal(abits)
        space = Signal(range(depth + 1), init=depth)
        space_nz = Signal(init=1)  # space != 0, registered with it
        space_back = Signal(range(depth + 1))  # bytes given back this cycle
        back_r = Signal(range(depth + 1))  # ... counted in ``space`` a cycle later
        byte_read = Signal()

        # The frame being received.
        count = Signal(range(max_frame + 2))  # bytes after the SFD, saturating past max_frame
        count_ok = Signal()  # count <= max_frame, registered with it
        written = Signal(range(max_frame + 1))  # of which in the buffer
        crc = Signal(32)
        dst = Signal(48)  # the first six bytes, the first in the low bits
        f_er = Signal()
        f_ovf = Signal()
        # Checks of the frame that ended, registered in the cycle after its last byte.
        r_long, r_runt, r_bad_fcs, r_other = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [wr.addr.eq(wr_ptr), wr.data.eq(d)]
        # ``wr.en`` comes from registered flags (``count_ok``, ``space_nz``) rather than from
        # comparisons of ``count`` and ``space``, which before this adder missed 125 MHz.
        # ``wr.en``, the latest of the terms, only chooses between two results made without it.
        space_base = Signal.like(space)
        m.d.comb += space_base.eq(space + back_r + byte_read)
        m.d.sync += [
            back_r.eq(space_back),
            space.eq(Mux(wr.en, space_base - 1, space_base)),
            space_nz.eq(Mux(wr.en, space_base != 1, space_base != 0)),
        ]
        with m.If(wr.en):
            m.d.sync += [wr_ptr.eq(wr_ptr + 1), written.eq(written + 1)]

        def start():
            m.d.sync += [count.eq(0), count_ok.eq(1), crc.eq(INIT), f_er.eq(0), f_ovf.eq(0)]
            m.next = "DATA"

        def idle():
            with m.If(dv):
                with m.If(d == SFD):
                    start()
                with m.Elif(d == PREAMBLE):
                    m.next = "PREAMBLE"
                with m.Else():
                    m.next = "DROP"
            with m.Else():
                m.next = "IDLE"

        def count_up(counter):
            m.d.sync += counter.eq(counter + 1)

        def drop(counter):
            count_up(counter)
            m.d.comb += space_back.eq(written)
            m.d.sync += wr_ptr.eq(wr_base)

        ours = int.from_bytes(mac_bytes(self.mac), "little")
        with m.FSM():
            with m.State("IDLE"):
                idle()
            with m.State("PREAMBLE"):
                with m.If(~dv):
                    m.next = "IDLE"
                with m.Elif(d == SFD):
                    start()
                with m.Elif(d != PREAMBLE):
                    m.next = "DROP"
            with m.State("DATA"):
                with m.If(dv):
                    m.d.sync += crc.eq(crc_byte_step(crc, d))
                    with m.If(count_ok):
                        m.d.sync += [count.eq(count + 1), count_ok.eq(count != max_frame)]
                        with m.If(space_nz):
                            m.d.comb += wr.en.eq(1)
                        with m.Else():
                            m.d.sync += f_ovf.eq(1)
                    with m.If(count < 6):
                        m.d.sync += dst.eq(Cat(dst[8:], d))
                    with m.If(er):
                        m.d.sync += f_er.eq(1)
                with m.Else():
                    m.d.sync += [
                        r_long.eq(count > max_frame),
                        r_runt.eq(count < MIN_FRAME),
                        r_bad_fcs.eq(crc != RESIDUE),
                        r_other.eq((dst != ours) & (dst != BROADCAST)),
                    ]
                    m.next = "END"
            with m.State("END"):
                # The frame's fate, from registered checks; and the next frame may begin.
                m.d.sync += written.eq(0)
                with m.If(f_er):
                    drop(self.rx_errors)
                with m.Elif(r_long):
                    drop(self.too_long)
                with m.Elif(r_runt):
                    drop(self.runts)
                with m.Elif(r_bad_fcs):
                    drop(self.bad_fcs)
                with m.Elif(r_other):
                    drop(self.other_mac)
                with m.Elif(f_ovf | ~lengths.w_rdy):
                    drop(self.overflow)
                with m.Else():
                    count_up(self.frames_ok)
                    m.d.comb += [
                        lengths.w_en.eq(1),
                        lengths.w_data.eq(count - 4),
                        space_back.eq(4),  # the FCS is not kept
                    ]
                    m.d.sync += [wr_base.eq(wr_ptr - 4), wr_ptr.eq(wr_ptr - 4)]
                idle()
            with m.State("DROP"):
                with m.If(~dv):
                    m.next = "IDLE"

        # Forwarding committed frames. The read port always holds the byte at rd_ptr: while
        # a frame is sent it reads ahead by one whenever a byte leaves.
        o = self.o_stream
        advance = ~o.valid | o.ready
        sending = Signal()
        remain = Signal(range(max_frame + 1))
        rd_ptr1 = Signal(abits, init=1)  # rd_ptr + 1, a register: no adder before the address
        m.d.comb += [
            byte_read.eq(sending & advance),
            rd.addr.eq(Mux(byte_read, rd_ptr1, rd_ptr)),
        ]
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(~sending):
            with m.If(lengths.r_rdy):
                m.d.comb += lengths.r_en.eq(1)
                m.d.sync += [sending.eq(1), remain.eq(lengths.r_data)]
        with m.Elif(advance):
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(rd.data),
                o.payload.last.eq(remain == 1),
                rd_ptr.eq(rd_ptr1),
                rd_ptr1.eq(rd_ptr1 + 1),
                remain.eq(remain - 1),
            ]
            with m.If(remain == 1):
                m.d.sync += sending.eq(0)

        return m


class MacTx(wiring.Component):
    """Ethernet transmitter: frames in, GMII-like bytes out.

    Each frame on ``i_stream`` (destination MAC through payload, at least one byte, ``last`` on
    its final byte) is stored whole in a packet buffer before it is sent, so the source may
    deliver it with gaps (as a clock-domain crossing upstream will); frames are sent in order.
    A frame is sent as 7 preamble bytes (0x55), the SFD (0xD5), the frame, zero bytes padding it
    to 60 bytes, and its FCS (least significant byte first), ``tx_en`` high throughout and
    bytes without gaps; then ``tx_en`` stays low for at least ``ifg`` cycles (the inter-frame
    gap, 12 byte times) before the next preamble.

    A frame longer than ``max_len`` bytes (FCS excluded) cannot be sent: its bytes are taken and
    thrown away, and it is counted in ``dropped``. The input stalls only while the buffer is
    full (to a byte, or to a frame: the condition is registered and so keeps one spare).

    Parameters
    ----------
    max_len : int
        The longest frame sent, FCS excluded (1514: 1500 bytes of payload, no VLAN tag).
    buffer_bytes : int
        Size of the packet buffer, a power of 2 greater than ``max_len``.
    max_frames : int
        How many frames the buffer can hold at once, plus one (at least 2).
    ifg : int
        Idle cycles between frames, at least 12.

    Members
    -------
    i_stream : ``In(stream.Signature(frame_layout))``
        Frames to send, without FCS.
    tx_en : ``Out(1)``
        GMII transmit enable.
    txd : ``Out(8)``
        GMII transmit data (0 while ``tx_en`` is low).
    frames_sent, dropped : ``Out(32)``
        Frames started on the wire, and frames dropped for being too long; wrapping.
    """

    def __init__(self, max_len: int = 1514, *, buffer_bytes: int = 4096, max_frames: int = 64,
                 ifg: int = 12):
        self._MustUse__silence = True
        _check_int("max_len", max_len, 1)
        _check_buffer(buffer_bytes, max_len + 1)
        _check_int("max_frames", max_frames, 2)
        _check_int("ifg", ifg, 12)
        self.max_len = max_len
        self.buffer_bytes = buffer_bytes
        self.max_frames = max_frames
        self.ifg = ifg
        super().__init__({
            "i_stream": In(stream.Signature(frame_layout)),
            "tx_en": Out(1), "txd": Out(8),
            "frames_sent": Out(32), "dropped": Out(32),
        })
        self._MustUse__silence = False

    def elaborate(self, platform):
        m = Module()
        depth = self.buffer_bytes
        abits = depth.bit_length() - 1
        max_len = self.max_len

        wr, rd, lengths = _packet_buffer(m, depth, max_len, self.max_frames)

        # The ring: frames queued from rd_ptr (the start of the frame being sent) to wr_base,
        # the frame being gathered from wr_base to wr_ptr. ``space`` is the room after wr_ptr,
        # kept up to date incrementally.
        wr_base = Signal(abits)
        wr_ptr = Signal(abits)
        rd_ptr = Signal(abits)
        space = Signal(range(depth + 1), init=depth)
        freed = Signal(range(max_len + 1))  # bytes the sender gives back this cycle
        given_back = Signal(range(max_len + 1))  # bytes a dropped frame gives back
        back_r = Signal(range(2 * max_len + 1))  # both, counted in ``space`` a cycle later
        m.d.sync += [back_r.eq(freed + given_back), space.eq(space + back_r - wr.en)]

        # Gathering a frame.
        i = self.i_stream
        count = Signal(range(max_len + 1))  # bytes of the frame in the buffer
        count1 = Signal(range(max_len + 2), init=1)  # count + 1
        f_long = Signal()
        full = Signal()  # count == max_len: a further byte makes the frame too long
        # Room for a byte and a frame, registered: so it leaves a byte and a frame spare (one
        # may go in while it is computed), and ``ready`` is a short path from flip-flops.
        room = Signal()
        m.d.sync += room.eq((space >= 2) & (lengths.w_level < self.max_frames - 1))
        m.d.comb += [
            i.ready.eq(room | full),
            wr.addr.eq(wr_ptr),
            wr.data.eq(i.payload.data),
        ]
        with m.If(i.valid & i.ready):
            with m.If(full):
                m.d.sync += f_long.eq(1)
            with m.Else():
                m.d.comb += wr.en.eq(1)
                m.d.sync += [count.eq(count1), count1.eq(count1 + 1), wr_ptr.eq(wr_ptr + 1),
                             full.eq(count1 == max_len)]
            with m.If(i.payload.last):
                m.d.sync += [count.eq(0), count1.eq(1), f_long.eq(0), full.eq(0)]
                with m.If(f_long | full):
                    m.d.sync += [self.dropped.eq(self.dropped + 1), wr_ptr.eq(wr_base)]
                    m.d.comb += given_back.eq(count)
                with m.Else():
                    m.d.comb += [lengths.w_en.eq(1), lengths.w_data.eq(count1)]
                    m.d.sync += wr_base.eq(wr_ptr + 1)

        # Sending. The memory's output goes straight into a register, ``q``, and from there into
        # ``q2``, so a byte is read three cycles before it is sent: ``raddr`` runs three ahead
        # of the byte sent. (Yosys puts a multiplexer between the block RAM and ``q``, its
        # emulation of a read colliding with a write, and the RAM's output is slow: ``q``
        # feeds only ``q2`` so that it can be placed beside the RAM.)
        length = Signal(range(max_len + 1))
        # Bytes of the frame from the one sent on: loaded with the length as it comes out of
        # the FIFO's LUT RAM (the length less one there, an adder more, missed 125 MHz).
        left = Signal(range(max_len + 1))
        short = Signal()  # the frame needs padding
        pos = Signal(range(max(max_len, 60) + 1))
        raddr = Signal(abits)
        q, q2 = Signal(8), Signal(8)
        m.d.comb += rd.addr.eq(raddr)
        m.d.sync += [q.eq(rd.data), q2.eq(q)]
        # The CRC takes in the byte sent in the cycle before (from the txd register).
        crc = Signal(32)
        crc_en = Signal()  # txd holds a byte the FCS covers
        crc_step = crc_byte_step(crc, self.txd)
        with m.If(crc_en):
            m.d.sync += crc.eq(crc_step)
        gap = Signal(range(self.ifg))

        def emit(byte, covered):
            m.d.sync += [self.tx_en.eq(1), self.txd.eq(byte), crc_en.eq(covered)]

        def idle():
            m.d.sync += [self.tx_en.eq(0), self.txd.eq(0), crc_en.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                idle()
                with m.If(lengths.r_rdy):
                    m.d.comb += lengths.r_en.eq(1)
                    m.d.sync += [length.eq(lengths.r_data), left.eq(lengths.r_data),
                                 pos.eq(0), raddr.eq(rd_ptr),
                                 self.frames_sent.eq(self.frames_sent + 1)]
                    m.next = "PREAMBLE"
            with m.State("PREAMBLE"):
                emit(PREAMBLE, 0)
                m.d.sync += [pos.eq(pos + 1), short.eq(length < 60)]
                with m.If(pos >= 5):
                    m.d.sync += raddr.eq(raddr + 1)
                with m.If(pos == 6):
                    m.next = "SFD"
            with m.State("SFD"):
                emit(SFD, 0)
                m.d.sync += [pos.eq(0), crc.eq(INIT), raddr.eq(raddr + 1)]
                m.next = "DATA"
            with m.State("DATA"):
                emit(q2, 1)
                m.d.sync += [pos.eq(pos + 1), raddr.eq(raddr + 1), left.eq(left - 1)]
                with m.If(left == 1):
                    m.d.sync += rd_ptr.eq(rd_ptr + length)
                    m.d.comb += freed.eq(length)
                    with m.If(short):
                        m.next = "PAD"
                    with m.Else():
                        m.d.sync += pos.eq(0)
                        m.next = "FCS"
            with m.State("PAD"):
                emit(0, 1)
                m.d.sync += pos.eq(pos + 1)
                with m.If(pos == 59):
                    m.d.sync += pos.eq(0)
                    m.next = "FCS"
            with m.State("FCS"):
                # In the first FCS cycle the last byte covered is still going into the CRC.
                final = Mux(crc_en, crc_step, crc)
                emit((~final).word_select(pos[:2], 8), 0)
                m.d.sync += pos.eq(pos + 1)
                with m.If(pos == 3):
                    m.d.sync += gap.eq(0)
                    m.next = "GAP"
            with m.State("GAP"):
                # ifg - 1 cycles here and one in IDLE.
                idle()
                m.d.sync += gap.eq(gap + 1)
                with m.If(gap == self.ifg - 2):
                    m.next = "IDLE"

        return m
