"""A UDP endpoint over Ethernet: ARP replies, IPv4/UDP receive and UDP reply datagrams.

:class:`UdpEndpoint` sits between the Ethernet MAC (``hdl/eth/mac.py``) and the link. It takes
the MAC's received frames (destination MAC through payload, FCS removed, a byte a beat,
``last`` on the final byte) and gives the MAC frames to send in the same form; the MAC pads
short frames and adds the FCS.

Receive. Every frame's first 42 bytes (the Ethernet header and then either an ARP packet or an
IPv4 header of 20 bytes and a UDP header) are kept in registers as they stream in, and the IPv4
header checksum is summed on the way. A frame is judged when its 42nd byte is taken; frames
shorter than 42 bytes are dropped and not counted (the MAC delivers at least 60 bytes).

- ARP: a request (htype 1, ptype 0x0800, hlen 6, plen 4, oper 1) whose target IP is the
  board's is answered with an ARP reply to the sender's MAC; any other ARP is dropped. One
  reply waits at a time: a request that comes while a reply is still waiting to be sent is
  dropped (the requester retries).
- IPv4, each drop counted once, in this order: version not 4 or a header of more than 20
  bytes (IP options are not parsed; such datagrams are dropped) -> ``ip_other``; bad header
  checksum -> ``ip_bad_checksum``; destination not the board's IP -> ``ip_other``; a fragment
  (MF set or a non-zero offset) -> ``ip_fragments``; protocol not UDP (17) -> ``ip_other``;
  UDP destination port not ``port`` -> ``udp_other_port``; UDP length under 8 or not the IP
  total length less 20 -> ``udp_bad_length``. The UDP checksum is not checked (IPv4 makes it
  optional; the link's frames carry their own CRC).
- An accepted datagram's UDP payload (as many bytes as the UDP length says; Ethernet padding
  after it is skipped) streams out on ``o_datagram`` as it arrives, nothing buffered. If the
  frame ends before the UDP length, the byte it ends with goes out with ``last`` and ``error``
  set, and the frame counts in ``udp_bad_length``. A datagram counts in ``datagrams_in`` and
  its source (MAC, IP, port) becomes the reply address only when all its bytes came. An empty
  datagram (UDP length 8) gives no beat on ``o_datagram`` (the stream cannot carry an empty
  message), but counts and sets the reply address.

Transmit. A reply payload from ``i_datagram`` is written into a buffer of ``max_datagram``
bytes; once its last byte is in, the frame is sent: Ethernet header to the reply address's
MAC, IPv4 header (TTL 64, DF, identification counting up from 0, header checksum), UDP header
(source port ``port``, checksum 0: none) and the payload. ``i_datagram`` waits while the buffer
is sent (one buffer). A payload of more than ``max_datagram`` bytes, or one that comes before
any datagram was accepted (no reply address), is dropped and counted in ``tx_dropped``. ARP
replies and UDP frames share ``o_frame``, a whole frame at a time, an ARP reply first when both
wait.

Rates. ``i_frame`` is taken a byte every cycle, back to back across frames, unless
``o_datagram`` holds back a payload byte (headers and skipped bytes are never held). A reply
frame leaves a byte every cycle once started, a few cycles after its payload's last byte came (the
header checksum), its payload read ahead from the buffer through registers so that the block
RAM's output meets 125 MHz on an ECP5 (speed grade 6, placed and routed alone).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

# A frame or a datagram payload, a byte a beat, ``last`` on its final byte: the MAC's layout.
from .mac import frame_layout

__all__ = ["UdpEndpoint", "datagram_out_layout", "frame_layout"]

#: A received datagram's payload; ``error`` is set on the last beat of a truncated one.
datagram_out_layout = data.StructLayout({"data": 8, "last": 1, "error": 1})

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
IP_PROTO_UDP = 17
TTL = 64
#: Bytes of the headers this endpoint reads and writes: Ethernet (14) and either ARP (28) or
#: IPv4 without options (20) and UDP (8).
HEADER_BYTES = 42
#: Registers the reply payload is read ahead into from the buffer.
PREFETCH = 4
#: The largest UDP payload the IPv4 total length (16 bits) allows.
MAX_UDP_PAYLOAD = 65535 - 28


def _check(name, value, bits):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must fit in {bits} bits, not {value!r}")


def _be_bytes(value, nbytes):
    """The bytes of ``value`` (an int or a Value), most significant first."""
    if isinstance(value, int):
        return [Const((value >> (8 * (nbytes - 1 - i))) & 0xFF, 8) for i in range(nbytes)]
    return [value.word_select(nbytes - 1 - i, 8) for i in range(nbytes)]


def _fold(total):
    """The 16-bit ones' complement sum of a wider sum of 16-bit words (up to 20 bits)."""
    once = total[:16] + total[16:]
    return (once[:16] + once[16])[:16]


class UdpEndpoint(wiring.Component):
    """ARP responder and one UDP port of an IPv4 node.

    Parameters
    ----------
    mac : int
        The board's MAC address, 48 bits (``0x020000000001`` is 02:00:00:00:00:01).
    ip : int
        The board's IPv4 address, 32 bits (``0xC0A80102`` is 192.168.1.2).
    port : int
        The UDP port it listens on and sends from.
    max_datagram : int
        The largest reply payload, the size of the transmit buffer in bytes.

    Members
    -------
    i_frame : ``In(stream.Signature(frame_layout))``
        Received Ethernet frames, destination MAC first, no FCS.
    o_frame : ``Out(stream.Signature(frame_layout))``
        Ethernet frames to send, destination MAC first, unpadded, no FCS.
    o_datagram : ``Out(stream.Signature(datagram_out_layout))``
        Payloads of accepted datagrams; ``error`` with ``last`` marks a truncated one.
    i_datagram : ``In(stream.Signature(frame_layout))``
        Reply payloads, sent to the source of the most recent accepted datagram.
    arp_replies, ip_bad_checksum, ip_fragments, ip_other, udp_other_port, udp_bad_length, \
datagrams_in, datagrams_out, tx_dropped : ``Out(32)``
        Event counters, as described in the module's documentation.
    """

    COUNTERS = ("arp_replies", "ip_bad_checksum", "ip_fragments", "ip_other", "udp_other_port",
                "udp_bad_length", "datagrams_in", "datagrams_out", "tx_dropped")

    def __init__(self, mac: int, ip: int, port: int, max_datagram: int = 1472):
        _check("mac", mac, 48)
        _check("ip", ip, 32)
        _check("port", port, 16)
        _check("max_datagram", max_datagram, 16)
        if not 1 <= max_datagram <= MAX_UDP_PAYLOAD:
            raise ValueError(f"max_datagram must be 1 to {MAX_UDP_PAYLOAD}, not {max_datagram}")
        self.mac, self.ip, self.port, self.max_datagram = mac, ip, port, max_datagram
        members = {
            "i_frame": In(stream.Signature(frame_layout)),
            "o_frame": Out(stream.Signature(frame_layout)),
            "o_datagram": Out(stream.Signature(datagram_out_layout)),
            "i_datagram": In(stream.Signature(frame_layout)),
        }
        members.update({name: Out(32) for name in self.COUNTERS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()

        def count(name):
            counter = getattr(self, name)
            m.d.sync += counter.eq(counter + 1)

        # Reply address: the source of the most recent accepted datagram.
        peer_mac, peer_ip, peer_port = Signal(48), Signal(32), Signal(16)
        have_peer = Signal()
        # A waiting ARP reply: the requester's MAC and IP.
        arp_pending = Signal()
        arp_sha, arp_spa = Signal(48), Signal(32)

        self._receive(m, count, peer_mac, peer_ip, peer_port, have_peer, arp_pending, arp_sha,
                      arp_spa)
        self._transmit(m, count, peer_mac, peer_ip, peer_port, have_peer, arp_pending, arp_sha,
                       arp_spa)
        return m

    # -- receive ---------------------------------------------------------------------------------

    def _receive(self, m, count, peer_mac, peer_ip, peer_port, have_peer, arp_pending, arp_sha,
                 arp_spa):
        i, o = self.i_frame, self.o_datagram
        hdr = [Signal(8, name=f"hdr{n}") for n in range(HEADER_BYTES)]

        def be(offset, nbytes):
            return Cat(*reversed(hdr[offset:offset + nbytes]))

        idx = Signal(range(HEADER_BYTES))
        csum = Signal(20)  # sum of the IPv4 header's 16-bit words
        csum_ok = Signal()
        is_arp = Signal()  # the frame being skipped is ARP, to be judged at its end
        arp_check = Signal()  # judge the ARP packet in the header registers this cycle
        remain = Signal(16)  # payload bytes still to come
        pre = Signal(data.StructLayout({name: 1 for name in (
            "ipv4", "arp", "ihl_bad", "csum_bad", "dst_bad", "fragment", "proto_bad", "port_bad",
            "len_bad", "empty")}))

        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        m.d.sync += arp_check.eq(0)
        byte = i.payload.data
        taken = i.valid & i.ready

        ethertype = be(12, 2)
        total_len = be(16, 2)
        flags_offset = be(20, 2)
        udp_len = be(38, 2)
        # The UDP length the IP total length implies, from registers long written when it is
        # compared (an adder and a comparison in one cycle missed 125 MHz); 17 bits, so that a
        # total length under 20 matches no UDP length.
        ip_udp_len = Signal(17)
        m.d.sync += ip_udp_len.eq(total_len - 20)

        with m.FSM(name="rx"):
            with m.State("HEADER"):
                m.d.comb += i.ready.eq(1)
                with m.If(taken):
                    for n in range(HEADER_BYTES):
                        with m.If(idx == n):
                            m.d.sync += hdr[n].eq(byte)
                    with m.If(idx == 0):
                        m.d.sync += csum.eq(0)
                    with m.Elif((idx >= 14) & (idx < 34)):
                        m.d.sync += csum.eq(csum + Mux(idx[0], byte, Cat(Const(0, 8), byte)))
                    with m.Else():
                        m.d.sync += csum_ok.eq(_fold(csum) == 0xFFFF)
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(i.payload.last):
                        m.d.sync += idx.eq(0)
                    # The checks are made a byte early, on the registers alone (the 41st and
                    # 42nd bytes, the UDP checksum, are not needed), so that the verdict as the
                    # 42nd byte is taken is a choice among registered flags.
                    with m.If(idx == HEADER_BYTES - 2):
                        m.d.sync += [
                            pre.ipv4.eq(ethertype == ETHERTYPE_IPV4),
                            pre.arp.eq(ethertype == ETHERTYPE_ARP),
                            pre.ihl_bad.eq(hdr[14] != 0x45),
                            pre.csum_bad.eq(~csum_ok),
                            pre.dst_bad.eq(be(30, 4) != self.ip),
                            pre.fragment.eq(flags_offset[13] | (flags_offset[:13] != 0)),
                            pre.proto_bad.eq(hdr[23] != IP_PROTO_UDP),
                            pre.port_bad.eq(be(36, 2) != self.port),
                            pre.len_bad.eq((udp_len < 8) | (udp_len != ip_udp_len)),
                            pre.empty.eq(udp_len == 8),
                            remain.eq(udp_len - 8),
                        ]
                    with m.If(idx == HEADER_BYTES - 1):
                        m.d.sync += idx.eq(0)
                        self._judge(m, count, i, be, pre, is_arp, arp_check, peer_mac, peer_ip,
                                    peer_port, have_peer)
            with m.State("PAYLOAD"):
                m.d.comb += i.ready.eq(~o.valid | o.ready)
                with m.If(taken):
                    end = remain == 1
                    m.d.sync += [
                        o.valid.eq(1),
                        o.payload.data.eq(byte),
                        o.payload.last.eq(end | i.payload.last),
                        o.payload.error.eq(~end & i.payload.last),
                        remain.eq(remain - 1),
                    ]
                    with m.If(end):
                        self._accept(m, count, be, peer_mac, peer_ip, peer_port, have_peer)
                        with m.If(i.payload.last):
                            m.next = "HEADER"
                        with m.Else():
                            m.d.sync += is_arp.eq(0)
                            m.next = "SKIP"
                    with m.Elif(i.payload.last):
                        count("udp_bad_length")
                        m.next = "HEADER"
            with m.State("SKIP"):
                m.d.comb += i.ready.eq(1)
                with m.If(taken & i.payload.last):
                    m.d.sync += arp_check.eq(is_arp)
                    m.next = "HEADER"

        # The ARP packet is judged two cycles after its frame ended: its comparisons are made in
        # the cycle after, when all 42 bytes are in the registers (a next frame's first byte is
        # written only at the end of that cycle), into a register, and then used (96 bits
        # compared in front of ``arp_pending`` missed 125 MHz). A next frame does not reach the
        # bytes kept (from the 23rd) in that time.
        arp_fixed = Cat(*reversed(hdr[14:22])) == 0x0001_0800_0604_0001
        arp_match, arp_judge = Signal(), Signal()
        m.d.sync += [arp_match.eq(arp_fixed & (be(38, 4) == self.ip)), arp_judge.eq(arp_check)]
        with m.If(arp_judge & arp_match & ~arp_pending):
            m.d.sync += [arp_pending.eq(1), arp_sha.eq(be(22, 6)), arp_spa.eq(be(28, 4))]

    def _accept(self, m, count, be, peer_mac, peer_ip, peer_port, have_peer):
        count("datagrams_in")
        m.d.sync += [peer_mac.eq(be(6, 6)), peer_ip.eq(be(26, 4)), peer_port.eq(be(34, 2)),
                     have_peer.eq(1)]

    def _judge(self, m, count, i, be, pre, is_arp, arp_check, peer_mac, peer_ip, peer_port,
               have_peer):
        """The verdict on a frame as its 42nd byte is taken, from the flags of ``pre``, and
        the state that follows."""
        last = i.payload.last

        def skip(arp=0):
            with m.If(last):
                m.d.sync += arp_check.eq(arp)
            with m.Else():
                m.d.sync += is_arp.eq(arp)
                m.next = "SKIP"

        with m.If(pre.ipv4):
            # The drops, in the order the module documentation gives, each counted once.
            drops = ((pre.ihl_bad, "ip_other"), (pre.csum_bad, "ip_bad_checksum"),
                     (pre.dst_bad, "ip_other"), (pre.fragment, "ip_fragments"),
                     (pre.proto_bad, "ip_other"), (pre.port_bad, "udp_other_port"),
                     (pre.len_bad, "udp_bad_length"))
            for n, (bad, counter) in enumerate(drops):
                with (m.Elif if n else m.If)(bad):
                    count(counter)
                    skip()
            with m.Elif(pre.empty):
                self._accept(m, count, be, peer_mac, peer_ip, peer_port, have_peer)
                skip()
            with m.Elif(last):
                count("udp_bad_length")  # the frame ended with the headers
            with m.Else():
                m.next = "PAYLOAD"
        with m.Elif(pre.arp):
            skip(arp=1)
        with m.Else():
            skip()

    # -- transmit --------------------------------------------------------------------------------

    def _transmit(self, m, count, peer_mac, peer_ip, peer_port, have_peer, arp_pending, arp_sha,
                  arp_spa):
        size = self.max_datagram
        m.submodules.buffer = buffer = Memory(shape=8, depth=size, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port()

        # Filling the buffer.
        i = self.i_datagram
        full = Signal()  # the buffer holds a payload to send
        length = Signal(range(size + 1))
        wptr = Signal(range(size + 1))
        overflow = Signal()
        m.d.comb += [
            i.ready.eq(~full),
            wr.data.eq(i.payload.data),
        ]
        with m.If(i.valid & i.ready):
            with m.If(wptr < size):
                m.d.comb += wr.en.eq(1)
                m.d.sync += wptr.eq(wptr + 1)
            with m.Else():
                m.d.sync += overflow.eq(1)
            with m.If(i.payload.last):
                m.d.sync += [wptr.eq(0), overflow.eq(0)]
                with m.If(overflow | (wptr == size) | ~have_peer):
                    count("tx_dropped")
                with m.Else():
                    m.d.sync += [full.eq(1), length.eq(wptr + 1)]

        # Sending.
        o = self.o_frame
        advance = ~o.valid | o.ready
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)

        def emit(value, last):
            m.d.sync += [o.valid.eq(1), o.payload.data.eq(value), o.payload.last.eq(last)]

        dst_mac, dst_ip, dst_port = Signal(48), Signal(32), Signal(16)
        ident = Signal(16)
        total, udp_total = Signal(16), Signal(16)
        csum_sum = Signal(20)
        csum = Signal(16)
        sending_arp = Signal()
        tx_idx = Signal(range(HEADER_BYTES))
        pay_left = Signal(range(size + 1))  # payload bytes to send after the next
        pay_last = Signal()  # the next payload byte sent is the last: pay_left == 0

        # The payload is read ahead into a queue of PREFETCH registers, from the start of the
        # frame. The block RAM's output goes into a plain register (its clock-to-output delay
        # leaves no time for logic at 125 MHz) and from there into the queue, and the read
        # address does not depend on ``o_frame.ready``.
        queue = [Signal(8, name=f"prefetch{k}", reset_less=True) for k in range(PREFETCH)]
        q_count = Signal(range(PREFETCH + 1))
        q_wr, q_rd = Signal(range(PREFETCH)), Signal(range(PREFETCH))
        fetching = Signal()
        rptr = Signal(range(size + 1))  # the next byte to read
        landing = Signal()  # the byte read in the previous cycle is on the read port
        landed = Signal()  # ... and the one before in rd_data
        rd_data = Signal(8, reset_less=True)
        issue = Signal()
        pop = Signal()
        # One address for both ports: the buffer is written only while it is not ``full`` and
        # read only while it is, so Yosys maps the two onto one port of the block RAM. Two
        # ports of one clock would get its emulation of a read colliding with a write, a
        # multiplexer after the read data that leaves no time at 125 MHz.
        addr = Signal(range(size + 1))
        m.d.comb += [
            issue.eq(fetching & (q_count + landing + landed < PREFETCH)),
            addr.eq(Mux(full, rptr, wptr)),
            rd.addr.eq(addr),
            wr.addr.eq(addr),
        ]
        m.d.sync += [landing.eq(issue), landed.eq(landing), rd_data.eq(rd.data)]
        # ``fetch_last`` is a register, like ``pay_last`` below: ``rptr == length - 1`` in
        # front of ``fetching`` missed 125 MHz.
        fetch_left = Signal(range(size + 1))  # payload bytes to read after the next
        fetch_last = Signal()  # the next read is the payload's last byte: fetch_left == 0
        with m.If(issue):
            m.d.sync += [rptr.eq(rptr + 1), fetch_left.eq(fetch_left - 1),
                         fetch_last.eq(fetch_left == 1)]
            with m.If(fetch_last):
                m.d.sync += fetching.eq(0)  # the payload's last byte is read
        with m.If(landed):
            for k in range(PREFETCH):
                with m.If(q_wr == k):
                    m.d.sync += queue[k].eq(rd_data)
            m.d.sync += q_wr.eq(Mux(q_wr == PREFETCH - 1, 0, q_wr + 1))
        with m.If(pop):
            m.d.sync += q_rd.eq(Mux(q_rd == PREFETCH - 1, 0, q_rd + 1))
        m.d.sync += q_count.eq(q_count + landed - pop)
        head = Array(queue)[q_rd]

        udp_header = (
            _be_bytes(dst_mac, 6) + _be_bytes(self.mac, 6) + _be_bytes(ETHERTYPE_IPV4, 2)
            + _be_bytes(0x4500, 2) + _be_bytes(total, 2) + _be_bytes(ident, 2)
            + _be_bytes(0x4000, 2) + _be_bytes(TTL, 1) + _be_bytes(IP_PROTO_UDP, 1)
            + _be_bytes(csum, 2) + _be_bytes(self.ip, 4) + _be_bytes(dst_ip, 4)
            + _be_bytes(self.port, 2) + _be_bytes(dst_port, 2) + _be_bytes(udp_total, 2)
            + _be_bytes(0, 2)
        )
        arp_reply = (
            _be_bytes(arp_sha, 6) + _be_bytes(self.mac, 6) + _be_bytes(ETHERTYPE_ARP, 2)
            + _be_bytes(0x0001_0800_0604_0002, 8) + _be_bytes(self.mac, 6)
            + _be_bytes(self.ip, 4) + _be_bytes(arp_sha, 6) + _be_bytes(arp_spa, 4)
        )
        assert len(udp_header) == len(arp_reply) == HEADER_BYTES
        # The header goes out of a shift register loaded once a frame (LOAD): a 42-way
        # multiplexer on the byte count was the 125 MHz domain's slowest path on the ECP5.
        header_out = Signal(8 * HEADER_BYTES)
        header_byte = header_out[:8]

        # The IPv4 header's words that do not change, summed.
        fixed = 0x4500 + 0x4000 + (TTL << 8 | IP_PROTO_UDP) + (self.ip >> 16) + (self.ip & 0xFFFF)

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                m.d.sync += [tx_idx.eq(0), rptr.eq(0)]
                with m.If(arp_pending):
                    m.d.sync += sending_arp.eq(1)
                    m.next = "LOAD"
                with m.Elif(full):
                    m.d.sync += [
                        sending_arp.eq(0),
                        dst_mac.eq(peer_mac),
                        dst_ip.eq(peer_ip),
                        dst_port.eq(peer_port),
                        total.eq(length + 28),
                        fetching.eq(1),
                        fetch_left.eq(length - 1),
                        fetch_last.eq(length == 1),
                        pay_left.eq(length - 1),
                        pay_last.eq(length == 1),
                        udp_total.eq(length + 8),
                    ]
                    m.next = "SUM"
            with m.State("SUM"):
                m.d.sync += csum_sum.eq(fixed + total + ident + dst_ip[16:] + dst_ip[:16])
                m.next = "CHECKSUM"
            with m.State("CHECKSUM"):
                m.d.sync += csum.eq(~_fold(csum_sum))
                m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += header_out.eq(Mux(sending_arp, Cat(*arp_reply), Cat(*udp_header)))
                m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(advance):
                    emit(header_byte, sending_arp & (tx_idx == HEADER_BYTES - 1))
                    m.d.sync += [tx_idx.eq(tx_idx + 1), header_out.eq(header_out >> 8)]
                    with m.If(tx_idx == HEADER_BYTES - 1):
                        with m.If(sending_arp):
                            m.d.sync += arp_pending.eq(0)
                            count("arp_replies")
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(advance & (q_count != 0)):
                    m.d.comb += pop.eq(1)
                    # ``end`` is a register: a count of the bytes sent compared with
                    # ``length - 1`` was too long in front of the state register's enable.
                    end = pay_last
                    emit(head, end)
                    m.d.sync += [pay_left.eq(pay_left - 1), pay_last.eq(pay_left == 1)]
                    with m.If(end):
                        m.d.sync += [full.eq(0), ident.eq(ident + 1), fetching.eq(0)]
                        count("datagrams_out")
                        m.next = "IDLE"
