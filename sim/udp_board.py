"""The virtual Ethernet board: an Ethernet device's gateware in Verilator, its link on UDP.

The host reaches it at ``udp://127.0.0.1:PORT`` with the same transport and driver as a board on
a LAN. The harness (``sim/harness/udp_harness.cpp``) plays the network: each datagram it
receives goes to the gateware as the Ethernet frame (IPv4, UDP) a host on the LAN would send, a
byte a cycle at the GMII side of the device's MACs, and each UDP frame the gateware sends back
goes to the host that asked. Everything from the MACs in, the clock-domain crossings included,
is the board's gateware (``boards.eth_top.EthLinkTop`` in its ``"gmii"`` mode).

It counts what went over the wire each way (:meth:`UdpVirtualBoard.stats`), and can write every
frame to a pcap file, for a test (or Wireshark) to read.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.lib import wiring

from .build import SimulationError
from .virtual_board import VirtualBoard, build_virtual_board

__all__ = ["UdpVirtualBoard", "build_udp_board"]

_SOURCE = "udp_harness.cpp"
_PORTS = {
    "RX_DV": "gmii_rx_dv", "RX_ER": "gmii_rx_er", "RXD": "gmii_rxd",
    "TX_EN": "gmii_tx_en", "TXD": "gmii_txd",
}

#: Bytes on the wire around each frame besides its own (destination MAC to FCS): the preamble
#: and SFD (8) and the smallest inter-frame gap (12).
PREAMBLE_AND_GAP = 20


def build_udp_board(top: wiring.Component, name: str) -> Path:
    """Build (or take from the cache) the virtual Ethernet board's executable of ``top``."""
    return build_virtual_board(top, name, ports=_PORTS, harness=_SOURCE, kind="udp-board",
                               needs="the GMII ports of EthLinkTop's 'gmii' mode")


class UdpVirtualBoard(VirtualBoard):
    """A running virtual Ethernet board. Start it with :meth:`start`, or use it as a context
    manager.

    Parameters
    ----------
    top : wiring.Component
        The device's top in ``"gmii"`` mode.
    name : str
        Its module name (also names the build in the cache).
    mac, ip, udp_port : int
        The address the gateware was built with: frames are sent to it.
    port : int
        UDP port on 127.0.0.1 to serve on; 0 picks a free one.
    pcap : path, optional
        Write every frame on the wire, both ways, to this pcap file.
    """

    scheme = "udp"

    def __init__(self, top: wiring.Component, name: str, *, mac: int, ip: int, udp_port: int,
                 port: int = 0, pcap: str | Path | None = None):
        self.mac, self.ip, self.udp_port = mac, ip, udp_port
        self.pcap = None if pcap is None else Path(pcap)
        self.last_stats: dict[str, int] = {}
        super().__init__(top, name, port=port)

    @staticmethod
    def _build(top: wiring.Component, name: str) -> Path:
        return build_udp_board(top, name)

    def _arguments(self) -> list[str]:
        args = [f"{self.mac:012x}", f"{self.ip:08x}", str(self.udp_port)]
        return [*args, str(self.pcap)] if self.pcap is not None else args

    def stats(self) -> dict[str, int]:
        """What went over the wire so far: datagrams each way, frames and their bytes on the
        wire (preamble to FCS) each way (``rx_*``: to the gateware), UDP payload bytes each
        way, frames from the gateware that were bad or not for the host, datagrams dropped."""
        process = self._process
        if process is None or process.poll() is not None:
            raise SimulationError(f"virtual board {self.name!r} is not running")
        process.stdin.write("\n")
        process.stdin.flush()
        line = process.stdout.readline()
        return _parse_stats(line)

    def _read_report(self, out: str) -> None:
        super()._read_report(out)
        for line in out.splitlines():
            if line.startswith("stats "):
                self.last_stats = _parse_stats(line)


def _parse_stats(line: str) -> dict[str, int]:
    words = line.split()
    if not words or words[0] != "stats" or len(words) % 2 != 1:
        raise SimulationError(f"the virtual Ethernet board's harness said {line!r}, not stats")
    return {words[i]: int(words[i + 1]) for i in range(1, len(words), 2)}
