"""cocotb testbench of the whole Ethernet device (``boards/eth_top.py``, ``mode="sim"``) under
Verilator: RGMII pins in and out, cocotbext-eth's RGMII models at 1 Gbps, frames built and
parsed by scapy.

Run by ``tests/boards/test_eth_top.py``, which passes the device's addresses and its manifest
(hex) as ``OFFLOAD_MAC``, ``OFFLOAD_IP``, ``OFFLOAD_PORT`` and ``OFFLOAD_MANIFEST``.

Clocks: ``clk`` (the core, ``sync``) at 50 MHz; ``eth_tx_clk`` at 125 MHz; the PHY's receive
clock ``rgmii_rx_clk`` at 125 MHz, another phase and a touch slower; ``tb_txc`` is
``eth_tx_clk`` delayed by 2 ns (an RGMII-ID PHY's transmit clock delay), which ``RgmiiSink``
samples the transmit pins with.
"""

from __future__ import annotations

import ipaddress
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer
from cocotbext.eth import GmiiFrame, RgmiiSink, RgmiiSource
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from hdl.link import protocol as p
from offload.link.codec import Frame, decode_body, frame_body, split_datagram

MAC = int(os.environ.get("OFFLOAD_MAC", str(0x02_00_00_00_00_01)))
IP_ADDR = int(os.environ.get("OFFLOAD_IP", str(0x0A00_0032)))
PORT = int(os.environ.get("OFFLOAD_PORT", "7777"))
MANIFEST = bytes.fromhex(os.environ.get("OFFLOAD_MANIFEST", ""))

OUR_MAC = ":".join(f"{b:02x}" for b in MAC.to_bytes(6, "big"))
OUR_IP = str(ipaddress.IPv4Address(IP_ADDR))
HOST_MAC = "02:12:34:56:78:9a"
HOST_IP = "10.0.0.1"
HOST_PORT = 40000

ETH_NS = 8
CORE_NS = 20


async def setup(dut):
    dut.rst.value = 1
    dut.eth_tx_rst.value = 1
    dut.rgmii_rx_ctl.value = 0
    dut.rgmii_rxd.value = 0
    cocotb.start_soon(Clock(dut.clk, CORE_NS, unit="ns").start())
    cocotb.start_soon(Clock(dut.eth_tx_clk, ETH_NS, unit="ns").start())
    # eth_tx_clk delayed by 2 ns, as an RGMII-ID PHY delays the transmit clock: the transmit
    # pins change with eth_tx_clk's edges and are sampled with tb_txc's.
    await Timer(2, unit="ns")
    cocotb.start_soon(Clock(dut.tb_txc, ETH_NS, unit="ns").start())
    # The PHY's receive clock: same rate, another phase, a touch slower.
    await Timer(1, unit="ns")
    cocotb.start_soon(Clock(dut.rgmii_rx_clk, ETH_NS * 1000 + 2, unit="ps").start())
    rx_src = RgmiiSource(dut.rgmii_rxd, dut.rgmii_rx_ctl, dut.rgmii_rx_clk)
    tx_sink = RgmiiSink(dut.rgmii_txd, dut.rgmii_tx_ctl, dut.tb_txc)
    await ClockCycles(dut.clk, 10)
    dut.rst.value = 0
    dut.eth_tx_rst.value = 0
    await ClockCycles(dut.clk, 20)
    return rx_src, tx_sink


async def next_frame(dut, tx_sink, what: str, cycles: int = 20000) -> Ether:
    """The next frame the device sends, FCS checked, parsed by scapy."""
    for _ in range(cycles // 16 + 1):
        if tx_sink.count():
            frame = await tx_sink.recv()
            assert frame.error is None or not any(frame.error), f"{what}: tx_er set"
            assert frame.check_fcs(), f"{what}: bad FCS"
            return Ether(frame.get_payload())
        await ClockCycles(dut.clk, 16)
    raise AssertionError(f"timed out after {cycles} core cycles waiting for {what}")


@cocotb.test()
async def arp_then_manifest(dut):
    """An ARP request for the device's IP is answered; a datagram holding an OP_MANIFEST
    request is answered with a datagram holding the manifest frame, to the sender."""
    rx_src, tx_sink = await setup(dut)

    request = (Ether(dst="ff:ff:ff:ff:ff:ff", src=HOST_MAC)
               / ARP(op=1, hwsrc=HOST_MAC, psrc=HOST_IP, pdst=OUR_IP))
    await rx_src.send(GmiiFrame.from_payload(bytes(request)))
    reply = await next_frame(dut, tx_sink, "the ARP reply")
    assert reply.haslayer(ARP), reply.summary()
    assert reply[Ether].dst == HOST_MAC and reply[Ether].src == OUR_MAC
    arp = reply[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        2, OUR_MAC, OUR_IP, HOST_MAC, HOST_IP), arp.summary()

    nonce = 0x1234_5678
    body = frame_body(Frame(p.SYSTEM_KERNEL_ID, p.OP_MANIFEST, nonce))
    datagram = (Ether(dst=OUR_MAC, src=HOST_MAC) / IP(src=HOST_IP, dst=OUR_IP)
                / UDP(sport=HOST_PORT, dport=PORT) / Raw(body))
    await rx_src.send(GmiiFrame.from_payload(bytes(datagram)))
    reply = await next_frame(dut, tx_sink, "the manifest datagram", cycles=40000)
    assert reply.haslayer(UDP), reply.summary()
    assert reply[Ether].dst == HOST_MAC and reply[Ether].src == OUR_MAC
    assert (reply[IP].src, reply[IP].dst) == (OUR_IP, HOST_IP)
    assert (reply[UDP].sport, reply[UDP].dport) == (PORT, HOST_PORT)
    payload = bytes(reply[UDP].payload)
    frames, leftover = split_datagram(payload)
    assert not leftover and len(frames) == 1, (len(frames), leftover)
    response = decode_body(frames[0])  # checks the CRC and the length
    assert response.kernel == p.SYSTEM_KERNEL_ID
    assert response.op == p.STATUS_OK, response.status_name
    assert response.seq == nonce & p.SEQ_MASK
    assert response.flags & p.FLAG_RESPONSE
    assert response.payload[4:] == MANIFEST
    await ClockCycles(dut.clk, 200)
    assert tx_sink.count() == 0, "a frame more than the replies"
