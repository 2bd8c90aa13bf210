"""Byte transports under the link: one class for a real board's UART and a virtual board's TCP,
one for a board on Ethernet (UDP).

pyserial's ``serial_for_url`` opens ``/dev/ttyUSB1``, ``serial:///dev/ttyUSB1`` and
``socket://127.0.0.1:PORT`` alike, so the driver above never knows which it has. The UDP
transport takes and gives the same COBS byte stream, and carries the frames in datagrams as
``hdl/link/protocol.py`` says (no COBS, several frames to a datagram), so the driver, its window
and its exactly-once rules are the same on every link.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import Protocol

import serial
from cobs import cobs

from ..errors import DeviceError
from .codec import FrameSplitter, pack_datagrams, split_datagram

__all__ = ["Transport", "SerialTransport", "UdpTransport"]

log = logging.getLogger("offload")


class Transport(Protocol):
    """What the link driver needs from a byte pipe."""

    name: str

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """Whatever has arrived, waiting up to ``timeout`` seconds for the first byte."""

    def reopen(self) -> None:
        """Close and open the pipe again (a board that went away and came back)."""

    def close(self) -> None: ...


class SerialTransport:
    """A pyserial port: a UART device path, ``serial://PATH`` or ``socket://HOST:PORT``."""

    def __init__(self, url: str, *, baudrate: int = 115200):
        if url.startswith("serial://"):
            url = url[len("serial://"):]
        self.name = url
        self._url = url
        self._baudrate = baudrate
        self._port = self._open()

    def _open(self):
        try:
            port = serial.serial_for_url(self._url, baudrate=self._baudrate, timeout=0.1,
                                         write_timeout=10)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise DeviceError(f"cannot open {self._url}: {exc}") from exc
        self._timeout = 0.1
        return port

    def reopen(self) -> None:
        self.close()
        self._port = self._open()

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"{self.name}: write failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        try:
            self._set_timeout(timeout)
            first = self._port.read(1)
            if not first:
                return b""
            self._set_timeout(0)
            return first + self._port.read(1 << 16)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"{self.name}: read failed: {exc}") from exc

    def _set_timeout(self, timeout: float) -> None:
        if timeout != self._timeout:
            self._port.timeout = timeout
            self._timeout = timeout

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError):  # already gone: nothing left to release
            pass


class UdpTransport:
    """A board on Ethernet: ``udp://HOST:PORT``.

    Frames written (COBS-encoded, as the driver writes them to any transport) wait until the
    driver next reads, and then go out packed into as few datagrams as hold them; the frames of
    each datagram received are given back COBS-encoded. Datagrams from any other address are
    ignored (the socket is connected). A written chunk that is not a COBS frame (a fault test's
    damaged bytes) goes out as a datagram of its own, as it was written.
    """

    def __init__(self, url: str):
        target = url[len("udp://"):] if url.startswith("udp://") else url
        host, _, port = target.rpartition(":")
        try:
            self._address = (host.strip("[]"), int(port))
        except ValueError:
            raise DeviceError(f"a UDP device is udp://HOST:PORT, not {url!r}") from None
        self.name = f"udp://{target}"
        self._out: list[bytes] = []
        self._splitter = FrameSplitter()
        self.datagrams_out = self.datagrams_in = 0
        self._sock = self._open()

    def _open(self) -> socket.socket:
        try:
            family = socket.getaddrinfo(*self._address, type=socket.SOCK_DGRAM)[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(self._address)
        except OSError as exc:
            raise DeviceError(f"cannot open {self.name}: {exc}") from exc
        sock.setblocking(False)
        return sock

    def reopen(self) -> None:
        self.close()
        self._out.clear()
        self._splitter = FrameSplitter()
        self._sock = self._open()

    def write(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            try:
                self._out.append(cobs.decode(raw))
            except cobs.DecodeError:
                self._flush()
                self._sendto(raw)

    def _flush(self) -> None:
        for datagram in pack_datagrams(self._out):
            self._sendto(datagram)
        self._out.clear()

    def _sendto(self, datagram: bytes) -> None:
        try:
            self._sock.send(datagram)
            self.datagrams_out += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass  # a full buffer or nobody listening: lost, as a datagram may be
        except OSError as exc:
            raise DeviceError(f"{self.name}: send failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        self._flush()
        out = bytearray()
        wait = max(0.0, timeout)
        while True:
            try:
                ready, _, _ = select.select([self._sock], [], [], wait)
            except (OSError, ValueError) as exc:
                raise DeviceError(f"{self.name}: read failed: {exc}") from exc
            if not ready:
                return bytes(out)
            try:
                datagram = self._sock.recv(1 << 16)
            except (BlockingIOError, ConnectionRefusedError):
                # Nothing, or the port answered "unreachable" to an earlier datagram: no
                # device there yet; the driver's timeout and retries deal with it.
                datagram = b""
            except OSError as exc:
                raise DeviceError(f"{self.name}: read failed: {exc}") from exc
            if datagram:
                self.datagrams_in += 1
                frames, cut = split_datagram(datagram)
                if cut:
                    log.debug("%s: a datagram ended in a partial frame", self.name)
                for body in frames:
                    out += cobs.encode(body) + b"\x00"
            wait = 0.0  # the first datagram waited; take whatever else has arrived

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass
