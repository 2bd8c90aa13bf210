"""The virtual Ethernet board (``--device udp-sim``, ``sim/udp_board.py``): the Colorlight
5A-75B's device gateware in Verilator, its link on UDP.

What went over its (virtual) wire is read back from the harness's pcap with scapy, an outside
library, and checked frame by frame; 4 KiB calls are measured against the 95% link efficiency
issue 11 asks for; and the HIL suite runs unchanged against it.
"""

import ipaddress
import random
import re
import subprocess
import sys
import zlib
from pathlib import Path

import google_crc32c
import pytest

import offload
from offload import kernels
from offload.gateware import device_design
from sim.toolchain import ToolchainError

ROOT = Path(__file__).resolve().parents[2]
HOST_MAC = "02:00:00:00:00:02"  # the harness's virtual host on the LAN
HOST_IP = "10.0.0.1"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A virtual Ethernet board with every kernel (the build the HIL suite's udp-sim uses),
    writing a pcap, and a device on it."""
    pytest.importorskip("scapy.layers.inet", reason="scapy (parses the wire) is not installed")
    from sim.udp_board import UdpVirtualBoard

    design = device_design("colorlight-5a75b", [spec.name for spec in kernels.KERNELS])
    mac, ip, udp_port = design.mac_ip_port
    pcap = tmp_path_factory.mktemp("wire") / "wire.pcap"
    try:
        vboard = UdpVirtualBoard(design.top("gmii"), design.module_name("gmii"), mac=mac,
                                 ip=ip, udp_port=udp_port, pcap=pcap)
    except ToolchainError as exc:
        pytest.skip(f"the virtual board needs Verilator: {exc}")
    with vboard:
        device = offload.open(vboard.url, fallback="never")
        try:
            yield vboard, device, design, pcap
        finally:
            device.close()


def test_4_kib_calls_reach_95_percent_link_efficiency(board):
    """Payload bytes over the bytes of the Ethernet frames that carried them (Ethernet, IPv4
    and UDP headers, the offload frames' headers and CRCs, and the FCS), toward the device."""
    vboard, device, design, _ = board
    assert device.backend.manifest.max_payload == design.max_payload == 1456
    rng = random.Random(4096)
    messages = [rng.randbytes(4096) for _ in range(16)]
    before = vboard.stats()
    assert [device.crc32c(m) for m in messages] == [google_crc32c.value(m) for m in messages]
    after = vboard.stats()
    delta = {k: after[k] - before[k] for k in after}
    frames = delta["rx_frames"]
    frame_bytes = delta["rx_wire_bytes"] - 8 * frames  # less preamble and SFD
    payload = sum(map(len, messages))
    efficiency = payload / frame_bytes
    line = payload / (frame_bytes + 20 * frames)  # preamble, SFD and the 12-byte gap too
    print(f"4 KiB calls: {payload} payload bytes in {frames} frames of {frame_bytes} bytes: "
          f"{100 * efficiency:.2f}% (on the line, with preamble and gap: {100 * line:.2f}%)")
    assert frames == 3 * len(messages)  # 1,456 + 1,456 + 1,184 bytes, a datagram each
    assert efficiency >= 0.95
    assert delta["tx_bad"] == delta["tx_other"] == delta["dropped"] == 0


def test_every_frame_on_the_wire_is_good_ethernet(board):
    """Both ways, each frame is whole Ethernet as an outside parser reads it: FCS right, IPv4
    header checksum right, addresses and ports those of the host and the board."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import rdpcap

    vboard, device, design, pcap = board
    for n in (0, 1, 100, 3000):
        data = bytes(range(256)) * 12
        assert device.crc32c(data[:n]) == google_crc32c.value(data[:n])
    mac, ip, udp_port = design.mac_ip_port
    board_mac = ":".join(f"{mac >> (8 * k) & 0xFF:02x}" for k in range(5, -1, -1))
    board_ip = str(ipaddress.IPv4Address(ip))
    frames = [bytes(packet) for packet in rdpcap(str(pcap))]
    ways = {"to the board": 0, "to the host": 0}
    for raw in frames:
        assert len(raw) >= 64, "a runt on the wire"
        assert zlib.crc32(raw[:-4]).to_bytes(4, "little") == raw[-4:], "bad FCS"
        frame = Ether(raw[:-4])
        assert IP in frame and UDP in frame, frame.summary()
        checksum = frame[IP].chksum
        del frame[IP].chksum
        assert Ether(bytes(frame))[IP].chksum == checksum, "bad IPv4 header checksum"
        assert frame[IP].flags == "DF" and frame[IP].frag == 0
        if frame.dst == board_mac:
            ways["to the board"] += 1
            assert (frame.src, frame[IP].src, frame[IP].dst, frame[UDP].dport) == (
                HOST_MAC, HOST_IP, board_ip, udp_port)
        else:  # the board answers the host the request came from
            ways["to the host"] += 1
            assert (frame.src, frame.dst, frame[IP].src, frame[IP].dst, frame[UDP].sport) == (
                board_mac, HOST_MAC, board_ip, HOST_IP, udp_port)
        payload = frame[Raw].load if Raw in frame else b""
        assert frame[UDP].len == 8 + len(payload) and frame[IP].len == 28 + len(payload)
    assert ways["to the board"] >= 4 and ways["to the host"] >= 4, ways


def test_the_hil_suite_passes_on_udp_sim():
    """``pytest tests/hil/test_hil.py --device udp-sim``, the HIL suite unchanged, run as a
    user would run it: every test passes (or is skipped with a reason, as the 72 MiB call and
    the UART's half frame are)."""
    pytest.importorskip("scapy.layers.inet", reason="scapy is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/hil/test_hil.py", "--device", "udp-sim", "-q",
         "-p", "no:cacheprovider", "-rs"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if "needs Verilator" in result.stdout:
        pytest.skip("the virtual board needs Verilator")
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", tail).group(1))
    assert passed >= 25 and "failed" not in tail, tail
    skipped = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", tail)
    assert sorted(skipped) == sorted([
        "a call of 72 MiB takes minutes; run with --slow",
        "a datagram has an end, so UDP has no half frame to drop after silence"]), tail
