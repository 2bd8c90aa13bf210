"""Byte transports under the link: one class for a real board's UART and a virtual board's TCP.

pyserial's ``serial_for_url`` opens ``/dev/ttyUSB1``, ``serial:///dev/ttyUSB1`` and
``socket://127.0.0.1:PORT`` alike, so the driver above never knows which it has.
"""

from __future__ import annotations

from typing import Protocol

import serial

from ..errors import DeviceError

__all__ = ["Transport", "SerialTransport"]


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
