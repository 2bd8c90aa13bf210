"""cocotb testbench of the UDP endpoint (``hdl/eth/udp.py``) under Verilator.

Run by ``tests/eth/test_udp_ip.py`` through :func:`sim.cocotb_runner.run_cocotb`, which passes
the board's addresses as ``OFFLOAD_MAC``, ``OFFLOAD_IP`` and ``OFFLOAD_PORT``. Every frame
fed in is built by scapy, and every frame that comes out is parsed by scapy: the testbench has
no packet code of its own. The stream models, the idle and backpressure patterns and the
stream-rule check (on all four stream ports, every cycle) are the shared ones of
``tests/cocotb_streams.py``.
"""

from __future__ import annotations

import ipaddress
import os
import random

import cocotb
from cocotb.triggers import ClockCycles
from scapy.layers.inet import ICMP, IP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from hdl.eth.udp import datagram_out_layout, frame_layout
from tests.cocotb_streams import PATTERNS, TB, bursty, random_50

MAC = int(os.environ.get("OFFLOAD_MAC", str(0x02_00_00_00_00_01)))
IP_ADDR = int(os.environ.get("OFFLOAD_IP", str(0xC0A8_0102)))
PORT = int(os.environ.get("OFFLOAD_PORT", "7000"))
MAX_DATAGRAM = int(os.environ.get("OFFLOAD_MAX_DATAGRAM", "1472"))
SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 8

OUR_MAC = ":".join(f"{b:02x}" for b in MAC.to_bytes(6, "big"))
OUR_IP = str(ipaddress.IPv4Address(IP_ADDR))
OTHER_IP = str(ipaddress.IPv4Address(IP_ADDR ^ 1))
COUNTERS = ("arp_replies", "ip_bad_checksum", "ip_fragments", "ip_other", "udp_other_port",
            "udp_bad_length", "datagrams_in", "datagrams_out", "tx_dropped")
#: The shortest frame the MAC delivers (FCS removed): scapy does not pad, the MAC does.
MIN_FRAME = 60


class Host:
    """A host on the network: a MAC, an IP and a UDP port."""

    def __init__(self, rng: random.Random):
        self.mac = ":".join(f"{b:02x}" for b in bytes([0x02]) + rng.randbytes(5))
        self.ip = str(ipaddress.IPv4Address(0x0A00_0000 | rng.getrandbits(24)))
        self.port = rng.randint(1024, 65535)

    def udp(self, payload: bytes, *, ip: dict | None = None, udp: dict | None = None,
            dst_ip: str = OUR_IP) -> bytes:
        packet = (Ether(dst=OUR_MAC, src=self.mac)
                  / IP(**{"src": self.ip, "dst": dst_ip, **(ip or {})})
                  / UDP(**{"sport": self.port, "dport": PORT, **(udp or {})}) / Raw(payload))
        return wire(packet)

    def arp(self, target: str = OUR_IP, **fields) -> bytes:
        return wire(Ether(dst="ff:ff:ff:ff:ff:ff", src=self.mac)
                    / ARP(op=fields.pop("op", 1), hwsrc=self.mac, psrc=self.ip, pdst=target,
                          **fields))


def wire(packet) -> bytes:
    """A scapy packet as the MAC delivers it: padded to the shortest frame."""
    return bytes(packet).ljust(MIN_FRAME, b"\0")


class UdpTB(TB):
    """Frames in on ``i_frame`` and out on ``o_frame``; datagrams out on ``o_datagram`` and in
    on ``i_datagram``."""

    def __init__(self, dut):
        super().__init__(dut, frame_layout, frame_layout, source="i_frame", sink="o_frame",
                         period_ns=CLOCK_NS, seed=SEED)
        self.datagrams = self.add_sink("o_datagram", datagram_out_layout)
        self.replies = self.add_source("i_datagram", frame_layout)

    def patterns(self, idle, backpressure, run: int) -> None:
        """The idle pattern on both sources and the backpressure pattern on both sinks."""
        self.set_idle_generator(idle)
        self.set_backpressure_generator(backpressure)
        for model, pattern, salt in ((self.replies, idle, 3), (self.datagrams, backpressure, 4)):
            model.set_pause_generator(None if pattern is None
                                      else pattern(SEED * 7919 + 100 * run + salt))

    def counters(self) -> dict[str, int]:
        return {name: int(getattr(self.dut, name).value) for name in COUNTERS}

    async def quiet(self, cycles: int = 300) -> None:
        """Wait for both sources to drain and then ``cycles`` more."""
        await self.source.wait()
        await self.replies.wait()
        await ClockCycles(self.clock, cycles)


def check_counters(tb: UdpTB, **expected: int) -> None:
    got = tb.counters()
    want = {name: expected.get(name, 0) for name in COUNTERS}
    assert got == want, f"counters {got}, expected {want}"


def check_arp_reply(raw: bytes, host: Host) -> None:
    frame = Ether(raw)
    assert frame.dst == host.mac and frame.src == OUR_MAC and frame.type == 0x0806, frame
    arp = frame[ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 2), arp
    assert (arp.hwsrc, arp.psrc) == (OUR_MAC, OUR_IP), arp
    assert (arp.hwdst, arp.pdst) == (host.mac, host.ip), arp
    assert len(raw) == 42, f"ARP reply of {len(raw)} bytes (the MAC pads, not the endpoint)"


def check_udp_frame(raw: bytes, host: Host, payload: bytes, ident: int) -> None:
    frame = Ether(raw)
    assert (frame.dst, frame.src, frame.type) == (host.mac, OUR_MAC, 0x0800), frame.summary()
    ip = frame[IP]
    assert (ip.version, ip.ihl, ip.tos, ip.len) == (4, 5, 0, 28 + len(payload)), ip.summary()
    assert (ip.id, int(ip.flags), ip.frag) == (ident & 0xFFFF, 2, 0), (ip.id, ip.flags, ip.frag)
    assert (ip.ttl, ip.proto, ip.src, ip.dst) == (64, 17, OUR_IP, host.ip), ip.summary()
    sent = ip.chksum
    fresh = IP(bytes(ip))
    del fresh.chksum  # scapy computes it again when the packet is built
    recomputed = IP(bytes(fresh)).chksum
    assert recomputed == sent, (
        f"IPv4 header checksum {sent:#06x}, scapy computes {recomputed:#06x}"
    )
    udp = frame[UDP]
    assert (udp.sport, udp.dport, udp.len, udp.chksum) == (PORT, host.port, 8 + len(payload), 0)
    assert bytes(udp.payload) == payload, (
        f"payload of {len(bytes(udp.payload))} bytes differs from the {len(payload)} sent"
    )
    assert len(raw) == 42 + len(payload)


def pattern_run(idle, backpressure) -> int:
    return PATTERNS.index(idle) * len(PATTERNS) + PATTERNS.index(backpressure)


# -- ARP -----------------------------------------------------------------------------------------

@cocotb.test()
@cocotb.parametrize(idle_inserter=PATTERNS, backpressure_inserter=PATTERNS)
async def arp(dut, idle_inserter, backpressure_inserter):
    """A request for our IP is answered; other ARP (another IP, a reply, another protocol
    type, another hardware type, a cut packet) is not."""
    tb = UdpTB(dut)
    run = pattern_run(idle_inserter, backpressure_inserter)
    tb.patterns(idle_inserter, backpressure_inserter, run)
    await tb.reset()
    rng = random.Random(SEED * 100 + run)
    hosts = [Host(rng) for _ in range(4)]

    replies = 0
    for host in hosts:
        ignored = [
            host.arp(OTHER_IP),
            host.arp(op=2, hwdst=OUR_MAC),
            host.arp(ptype=0x86DD),
            host.arp(hwtype=6),
            host.arp(op=3),
            bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=host.mac)
                  / ARP(hwsrc=host.mac, psrc=host.ip, pdst=OUR_IP))[:41],  # no padding
        ]
        for frame in ignored:
            tb.source.send(frame)
        request = host.arp()
        if replies % 2:
            request = request[:42]  # a request not padded: it ends with the target IP
        tb.source.send(request)
        replies += 1
        reply = await tb.sink.recv(3000)
        check_arp_reply(reply.data, host)
    await tb.quiet()
    assert len(tb.sink.messages) == replies, [Ether(m.data).summary() for m in tb.sink.messages]
    assert not tb.datagrams.messages
    check_counters(tb, arp_replies=replies)


# -- receiving -----------------------------------------------------------------------------------

def receive_cases(rng: random.Random, count: int):
    """Frames, each with the datagram it must give (payload, error) or None, and the counter
    it must raise (or None)."""
    host = Host(rng)
    sizes = [0, 1, 17, 18, 19, MAX_DATAGRAM]
    sizes += [rng.randint(0, MAX_DATAGRAM) for _ in range(count - len(sizes))]
    cases = []
    for size in sizes:
        payload = rng.randbytes(size)
        cases.append((host.udp(payload), (payload, False) if size else None, "datagrams_in"))

    payload = rng.randbytes(rng.randint(20, 200))
    n = len(payload)
    good_ip = IP(bytes(IP(src=host.ip, dst=OUR_IP) / UDP() / Raw(payload))).chksum
    cut = rng.randint(18, n - 1)
    bad = [
        (host.udp(payload, udp={"dport": PORT ^ 0x100}), "udp_other_port"),
        (host.udp(payload, dst_ip=OTHER_IP), "ip_other"),
        (host.udp(payload, ip={"chksum": good_ip ^ 0x0100}), "ip_bad_checksum"),
        (host.udp(payload, ip={"flags": "MF"}), "ip_fragments"),
        (host.udp(payload, ip={"frag": 185}), "ip_fragments"),
        (host.udp(payload, ip={"flags": "MF", "frag": 1}), "ip_fragments"),
        (host.udp(payload, ip={"options": [IPOption_Router_Alert()]}), "ip_other"),
        (host.udp(payload, ip={"proto": 6}), "ip_other"),
        (host.udp(payload, ip={"version": 5}), "ip_other"),
        (wire(Ether(dst=OUR_MAC, src=host.mac) / IP(src=host.ip, dst=OUR_IP) / ICMP()
              / Raw(payload)), "ip_other"),
        # The UDP length disagrees with the IP total length, or is under 8.
        (host.udp(payload, udp={"len": 8 + n - 1}), "udp_bad_length"),
        (host.udp(payload, udp={"len": 8 + n + 1}), "udp_bad_length"),
        (host.udp(payload, udp={"len": 7}, ip={"len": 27}), "udp_bad_length"),
        # Not IPv4.
        (wire(Ether(dst=OUR_MAC, src=host.mac) / IPv6(src="fe80::1", dst="fe80::2")
              / UDP(sport=host.port, dport=PORT) / Raw(payload)), None),
        (wire(Ether(dst=OUR_MAC, src=host.mac, type=0x88B5) / Raw(payload)), None),
        (wire(Ether(dst=OUR_MAC, src=host.mac) / Dot1Q(vlan=5) / IP(src=host.ip, dst=OUR_IP)
              / UDP(sport=host.port, dport=PORT) / Raw(payload)), None),
        # Shorter than the headers: dropped, not counted.
        (host.udp(payload)[:30], None),
    ]
    cases += [(frame, None, counter) for frame, counter in bad]
    # The frame ends before the UDP length: the bytes that came, flagged.
    truncated = host.udp(payload, ip={"len": 28 + n + 40}, udp={"len": 8 + n + 40})
    cases.append((truncated, (payload, True), "udp_bad_length"))
    # ... cut inside the payload.
    cases.append((host.udp(payload)[:42 + cut], (payload[:cut], True), "udp_bad_length"))
    # ... or right after the headers: nothing comes out.
    no_payload = host.udp(b"", ip={"len": 28 + 30}, udp={"len": 8 + 30})[:42]
    cases.append((no_payload, None, "udp_bad_length"))
    # Ethernet padding after a short payload is not part of it.
    short = rng.randbytes(3)
    cases.append((host.udp(short), (short, False), "datagrams_in"))
    rng.shuffle(cases)
    return cases


@cocotb.test()
@cocotb.parametrize(idle_inserter=PATTERNS, backpressure_inserter=PATTERNS)
async def receive(dut, idle_inserter, backpressure_inserter):
    """Datagrams to our port of random sizes come out byte-exact; every kind of unwanted frame
    is dropped and counted where it should be."""
    tb = UdpTB(dut)
    run = pattern_run(idle_inserter, backpressure_inserter)
    tb.patterns(idle_inserter, backpressure_inserter, run)
    await tb.reset()
    rng = random.Random(SEED * 1000 + run)
    cases = receive_cases(rng, 16)

    expected = []
    counts: dict[str, int] = {}
    for frame, datagram, counter in cases:
        tb.source.send(frame)
        if datagram is not None:
            expected.append(datagram)
        if counter is not None:
            counts[counter] = counts.get(counter, 0) + 1
    await tb.datagrams.wait_for(len(expected), tb.timeout_cycles([c[0] for c in cases]))
    await tb.quiet()
    got = [(m.data, m.error) for m in tb.datagrams.messages]
    assert len(got) == len(expected), f"{len(got)} datagrams out, expected {len(expected)}"
    for number, ((data, error), (want, want_error)) in enumerate(zip(got, expected,
                                                                     strict=True)):
        assert error == want_error, f"datagram {number}: error {error}, expected {want_error}"
        differ = [k for k, (a, b) in enumerate(zip(data, want, strict=False)) if a != b]
        assert data == want, (
            f"datagram {number}: {len(data)} bytes out, expected {len(want)}; first difference "
            f"at {differ[:1]}"
        )
    assert not tb.sink.messages, "a frame was sent in answer to received datagrams"
    check_counters(tb, **counts)
    tb.log.info("%d frames, %d datagrams out", len(cases), len(expected))


# -- replying ------------------------------------------------------------------------------------

@cocotb.test()
@cocotb.parametrize(idle_inserter=[None, random_50], backpressure_inserter=PATTERNS)
async def reply(dut, idle_inserter, backpressure_inserter):
    """Reply payloads go as valid IPv4/UDP frames to the source of the latest datagram; one
    before any datagram, and one too long, are dropped."""
    tb = UdpTB(dut)
    run = pattern_run(idle_inserter, backpressure_inserter)
    tb.patterns(idle_inserter, backpressure_inserter, run)
    await tb.reset()
    rng = random.Random(SEED * 2000 + run)

    # No reply address yet: dropped.
    tb.replies.send(b"nobody asked")
    await tb.quiet(100)
    assert not tb.sink.messages
    check_counters(tb, tx_dropped=1)

    ident = 0
    sent = 0
    received = 0
    for _ in range(2):
        host = Host(rng)
        # An empty datagram sets the reply address too.
        tb.source.send(host.udp(b""))
        received += 1
        await tb.quiet(100)
        sizes = [1, MAX_DATAGRAM] + [rng.randint(1, MAX_DATAGRAM) for _ in range(6)]
        payloads = [rng.randbytes(size) for size in sizes]
        for payload in payloads:
            tb.replies.send(payload)
        tb.replies.send(rng.randbytes(MAX_DATAGRAM + 1))  # too long: dropped
        payloads.append(b"after the dropped one")
        tb.replies.send(payloads[-1])
        for payload in payloads:
            frame = await tb.sink.recv(40 * (len(payload) + 100))
            check_udp_frame(frame.data, host, payload, ident)
            ident += 1
            sent += 1
    await tb.quiet()
    assert len(tb.sink.messages) == sent
    check_counters(tb, datagrams_in=received, datagrams_out=sent, tx_dropped=3)


@cocotb.test()
async def reply_to_latest(dut):
    """The reply address follows the latest datagram accepted, not later dropped ones, and
    replies sent while datagrams arrive are not disturbed by them."""
    tb = UdpTB(dut)
    tb.patterns(random_50, bursty, 9)
    await tb.reset()
    rng = random.Random(SEED * 3000)
    a, b = Host(rng), Host(rng)
    tb.source.send(a.udp(b"from a"))
    await tb.quiet(100)
    # Dropped frames from b do not move the reply address.
    tb.source.send(b.udp(b"to another port", udp={"dport": PORT ^ 1}))
    tb.source.send(b.udp(b"x" * 40, ip={"len": 28 + 80}, udp={"len": 8 + 80}))  # truncated
    tb.source.send(b.udp(b"fragment", ip={"flags": "MF"}))
    await tb.quiet(100)
    payloads = [rng.randbytes(rng.randint(1, 600)) for _ in range(4)]
    for payload in payloads:
        tb.replies.send(payload)
    # Datagrams from b arriving while the replies to a go out; the replies queued after them
    # may go to either, so they are sent only once b's last datagram is in.
    for size in (300, 500):
        tb.source.send(b.udp(rng.randbytes(size)))
    for number, payload in enumerate(payloads):
        frame = await tb.sink.recv(40 * (len(payload) + 100))
        # Each reply goes to the latest source when its frame starts: a or b.
        dst = Ether(frame.data).dst
        host = a if dst == a.mac else b
        check_udp_frame(frame.data, host, payload, number)
    await tb.quiet()
    later = rng.randbytes(100)
    tb.replies.send(later)
    frame = await tb.sink.recv(40 * 200)
    check_udp_frame(frame.data, b, later, len(payloads))


@cocotb.test()
async def arp_and_udp_share_output(dut):
    """ARP replies and UDP frames share ``o_frame`` a whole frame at a time."""
    tb = UdpTB(dut)
    tb.patterns(random_50, random_50, 10)
    await tb.reset()
    rng = random.Random(SEED * 4000)
    host = Host(rng)
    tb.source.send(host.udp(b"hello"))
    await tb.quiet(100)
    payloads = [rng.randbytes(rng.randint(1, 400)) for _ in range(12)]
    for payload in payloads:
        tb.replies.send(payload)
    askers = [Host(rng) for _ in range(6)]
    for asker in askers:
        tb.source.send(asker.arp())
        # Far enough apart that each reply has gone before the next request is in.
        await tb.source.wait()
        await ClockCycles(tb.clock, 2500)
    await tb.quiet(2000)
    udp_frames = [m.data for m in tb.sink.messages if Ether(m.data).type == 0x0800]
    arp_frames = [m.data for m in tb.sink.messages if Ether(m.data).type == 0x0806]
    assert len(udp_frames) == len(payloads) and len(arp_frames) == len(askers)
    for number, (raw, payload) in enumerate(zip(udp_frames, payloads, strict=True)):
        check_udp_frame(raw, host, payload, number)
    for raw, asker in zip(arp_frames, askers, strict=True):
        check_arp_reply(raw, asker)
    check_counters(tb, arp_replies=len(askers), datagrams_in=1, datagrams_out=len(payloads))


@cocotb.test()
async def full_rate(dut):
    """With no idle and no backpressure, frames are taken a byte every cycle with no bubble,
    even back to back, and each reply frame goes out a byte every cycle."""
    tb = UdpTB(dut)
    await tb.reset()
    rng = random.Random(SEED * 5000)
    host = Host(rng)
    frames = [host.udp(rng.randbytes(rng.randint(0, 600))) for _ in range(8)]
    frames.insert(3, host.arp())
    for frame in frames:
        tb.source.send(frame)
    await tb.quiet(200)
    accepted = tb.source.accepted
    assert len(accepted) == sum(map(len, frames))
    assert accepted[-1] - accepted[0] == len(accepted) - 1, "a bubble in taking frames"
    for message in tb.datagrams.messages:
        assert message.end - message.start == len(message.data) - 1, "a bubble in a datagram"

    payloads = [rng.randbytes(size) for size in (1, 2, 3, 4, 5, 100, MAX_DATAGRAM)]
    for payload in payloads:
        tb.replies.send(payload)
    await tb.sink.wait_for(1 + len(payloads), 20_000)  # the ARP reply and the UDP frames
    frames_out = [m for m in tb.sink.messages if Ether(m.data).type == 0x0800]
    assert len(frames_out) == len(payloads)
    for number, (message, payload) in enumerate(zip(frames_out, payloads, strict=True)):
        check_udp_frame(message.data, host, payload, number)
        assert message.end - message.start == len(message.data) - 1, "a bubble in a frame"
