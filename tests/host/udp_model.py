"""A device model behind a UDP socket on 127.0.0.1, with datagrams dropped, duplicated and
reordered on the way in and out: what a board on a LAN looks like to the host's UDP transport.

The datagrams are taken apart and made with the project's codec (the gateware's own end is
tested against outside libraries); what this checks is the host: its transport and its driver
over a lossy, reordering link.
"""

from __future__ import annotations

import socket
import threading

from cobs import cobs

from offload.link.codec import FrameSplitter, pack_datagrams, split_datagram

from ..hil.udp_proxy import DatagramFaults
from .device_model import DeviceModel


class UdpModelServer:
    """``model`` answering datagrams on ``udp://127.0.0.1:<port>`` in a thread of its own.

    ``drop``, ``duplicate`` and ``reorder`` are the chances that a datagram (each way) is lost,
    sent twice, or held back until after the next one. ``counts`` tallies what was done.
    """

    def __init__(self, model: DeviceModel, *, drop: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, seed: int = 0):
        self.model = model
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.faults = DatagramFaults(drop=drop, duplicate=duplicate, reorder=reorder, seed=seed)
        # The faults' counts are this dict's too.
        self.counts = self.faults.counts
        self.counts.update(datagrams_in=0, datagrams_out=0, frames_in=0, cut=0)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"udp://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> UdpModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        splitter = FrameSplitter()
        while not self._stop.is_set():
            try:
                datagram, peer = self.sock.recvfrom(1 << 16)
            except TimeoutError:
                self.faults.release()  # nothing came: what was held back goes now
                continue
            except OSError:
                return
            self.faults.deliver(datagram, lambda d, peer=peer: self._answer(d, peer, splitter))

    def _answer(self, datagram: bytes, peer, splitter: FrameSplitter) -> None:
        self.counts["datagrams_in"] += 1
        bodies, cut = split_datagram(datagram)
        self.counts["cut"] += cut
        self.counts["frames_in"] += len(bodies)
        stream = b"".join(cobs.encode(body) + b"\x00" for body in bodies)
        answers = [cobs.decode(raw) for raw in splitter.feed(self.model.feed(stream))]
        for out in pack_datagrams(answers):
            self.faults.deliver(out, lambda d, peer=peer: self._send(d, peer))

    def _send(self, datagram: bytes, peer) -> None:
        self.counts["datagrams_out"] += 1
        try:
            self.sock.sendto(datagram, peer)
        except OSError:
            pass
