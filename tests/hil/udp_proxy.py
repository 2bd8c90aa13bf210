"""A UDP proxy that drops, duplicates and reorders datagrams, as a LAN may: for the fault tests
of a device on UDP (a virtual Ethernet board, or a board on the LAN).

It sits between a host and a device::

    host ──► UdpFaultProxy.url ──► upstream (the device's address and port)

Datagrams from the host go to the device from the proxy's own socket, so the device answers the
proxy, which sends the answers on to the host that last sent. Both ways go through the same
:class:`DatagramFaults`.
"""

from __future__ import annotations

import random
import select
import socket
import threading

__all__ = ["DatagramFaults", "UdpFaultProxy"]


class DatagramFaults:
    """``drop``, ``duplicate`` and ``reorder`` are the chances that a datagram is lost, sent
    twice, or held back until after the next one (or until :meth:`release`). ``counts``
    tallies what was done."""

    def __init__(self, *, drop: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
                 seed: int = 0):
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.rng = random.Random(seed)
        self.counts = {"dropped": 0, "duplicated": 0, "reordered": 0}
        self._held: list[tuple[bytes, object]] = []

    def deliver(self, datagram: bytes, send) -> None:
        """Pass ``datagram`` to ``send`` (or not, or twice, or later), as the faults fall."""
        if self.rng.random() < self.drop:
            self.counts["dropped"] += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.counts["duplicated"] += copies - 1
        if self.rng.random() < self.reorder:
            self.counts["reordered"] += 1
            self._held.append((datagram, send))
            return
        for _ in range(copies):
            send(datagram)
        self.release()  # what was held back goes after this one

    def release(self) -> None:
        """Send what was held back."""
        while self._held:
            held, send = self._held.pop(0)
            send(held)


class UdpFaultProxy:
    """Forwards between ``udp://127.0.0.1:<port>`` (:attr:`url`) and ``upstream``
    (``(host, port)``) through :class:`DatagramFaults` made of ``faults``, in a thread of its
    own. Use it as a context manager."""

    def __init__(self, upstream: tuple[str, int], **faults):
        self.upstream = upstream
        self.faults = DatagramFaults(**faults)
        self.down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.down.bind(("127.0.0.1", 0))
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.bind(("0.0.0.0", 0))
        self.url = f"udp://127.0.0.1:{self.down.getsockname()[1]}"
        self.client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def counts(self) -> dict[str, int]:
        return self.faults.counts

    def __enter__(self) -> UdpFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.down.close()
        self.up.close()

    def _send(self, sock: socket.socket, to) -> object:
        def send(datagram: bytes) -> None:
            try:
                sock.sendto(datagram, to() if callable(to) else to)
            except OSError:
                pass
        return send

    def _serve(self) -> None:
        to_device = self._send(self.up, self.upstream)
        to_host = self._send(self.down, lambda: self.client)
        while not self._stop.is_set():
            ready, _, _ = select.select([self.down, self.up], [], [], 0.05)
            if not ready:
                self.faults.release()  # nothing came: what was held back goes now
                continue
            for sock in ready:
                try:
                    datagram, peer = sock.recvfrom(1 << 16)
                except OSError:
                    return
                if sock is self.down:
                    self.client = peer
                    self.faults.deliver(datagram, to_device)
                elif self.client is not None:
                    self.faults.deliver(datagram, to_host)
