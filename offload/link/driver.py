"""The host end of the link: sequenced frames, several in flight, retries, the manifest.

The same driver talks to a real board over its UART and to a virtual board over TCP; only the
transport underneath differs.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdl.link import protocol as p

from ..errors import DeviceError
from ..kernels import KernelSpec
from .codec import Frame, FrameError, FrameSplitter, decode_frame, encode_frame
from .transport import Transport

__all__ = ["Manifest", "LinkBackend"]

log = logging.getLogger("offload.link")


@dataclass(frozen=True)
class Manifest:
    """What a device says it is: parsed from the system kernel's OP_MANIFEST response."""

    expected_seq: int
    link: int
    board: str
    clock_hz: int
    build: str
    max_payload: int
    max_response: int
    window: int
    kernels: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def parse(cls, payload: bytes) -> Manifest:
        if len(payload) < 2:
            raise DeviceError("the device's manifest is empty")
        try:
            doc = json.loads(payload[2:].decode("utf-8"))
            return cls(
                expected_seq=int.from_bytes(payload[:2], "little"),
                link=int(doc["link"]), board=str(doc["board"]), clock_hz=int(doc["clock_hz"]),
                build=str(doc["build"]), max_payload=int(doc["max_payload"]),
                max_response=int(doc["max_response"]), window=int(doc["window"]),
                kernels=tuple(doc["kernels"]), raw=doc,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DeviceError(f"the device's manifest is not valid: {exc}") from exc

    def kernel(self, name: str) -> dict[str, Any] | None:
        for entry in self.kernels:
            if entry.get("name") == name:
                return entry
        return None


class LinkBackend:
    """Runs kernels on a device at the other end of ``transport``.

    Parameters
    ----------
    transport : Transport
        The byte pipe (see :class:`~offload.link.transport.SerialTransport`).
    timeout : float
        Seconds to wait for a response before sending the frame again.
    retries : int
        How many times one frame is sent again before the call fails.
    on_close : callable, optional
        Called after the transport is closed (a virtual board uses it to stop).
    """

    def __init__(self, transport: Transport, *, timeout: float = 0.5, retries: int = 8,
                 on_close=None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._on_close = on_close
        self._splitter = FrameSplitter()
        self._counts: Counter[str] = Counter()
        self._system_seq = 0
        self._dead: str | None = None
        self.manifest = Manifest.parse(self.system(p.OP_MANIFEST))
        if self.manifest.link != p.LINK_VERSION:
            raise DeviceError(
                f"{transport.name} speaks link version {self.manifest.link}; this offload "
                f"speaks {p.LINK_VERSION}: rebuild the bitstream or update offload"
            )
        self._next_seq = self.manifest.expected_seq
        self.window = max(1, min(self.manifest.window, p.REPLAY_WINDOW))
        self.kernels = self._usable_kernels()
        self._close_open_messages()

    def _close_open_messages(self) -> None:
        # A host that died in the middle of a multi-frame message left it open; the next call
        # to that kernel would be appended to it. End it, and drop what the kernel answers.
        counters = self.device_counters()
        for entry in self.manifest.kernels:
            if counters.get(entry["name"], {}).get("open_message"):
                log.warning("%s: %s had a message left open by an earlier host; ending it",
                            self.transport.name, entry["name"])
                self.exchange(entry["id"], [b""], [0])
                self._counts["messages_closed"] += 1

    def _usable_kernels(self) -> frozenset[str]:
        from .. import kernels as registry

        usable = set()
        for entry in self.manifest.kernels:
            try:
                spec = registry.get(entry["name"])
            except (KeyError, TypeError):
                continue  # a kernel this offload does not know: nothing to call it with
            if entry.get("id") == spec.id and entry.get("version") == spec.version:
                usable.add(spec.name)
            else:
                log.warning("%s: %s on the device is id %s version %s, offload expects id %s "
                            "version %s: not used", self.transport.name, spec.name,
                            entry.get("id"), entry.get("version"), spec.id, spec.version)
        return frozenset(usable)

    # -- low level ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._check_alive()
        try:
            self.transport.write(data)
        except DeviceError as exc:
            self._dead = str(exc)
            raise
        self._counts["frames_out"] += 1
        self._counts["wire_bytes_out"] += len(data)

    def _receive(self, timeout: float) -> list[Frame]:
        self._check_alive()
        try:
            data = self.transport.read(max(0.0, timeout))
        except DeviceError as exc:
            self._dead = str(exc)
            raise
        self._counts["wire_bytes_in"] += len(data)
        frames = []
        for raw in self._splitter.feed(data):
            try:
                frame = decode_frame(raw)
            except FrameError:
                self._counts["bad_frames_in"] += 1
                continue
            if frame.flags & p.FLAG_RESPONSE:
                frames.append(frame)
            else:
                self._counts["echoed_frames_in"] += 1
        self._counts["frames_in"] += len(frames)
        return frames

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise DeviceError(f"{self.transport.name} is gone: {self._dead}")

    # -- system kernel -----------------------------------------------------------------------

    def system(self, op: int) -> bytes:
        """Ask the system kernel (unsequenced, so simply asked again on a timeout)."""
        for attempt in range(self.retries + 1):
            self._system_seq = (self._system_seq + 1) & 0xFFFF
            nonce = self._system_seq
            self._send(encode_frame(Frame(p.SYSTEM_KERNEL_ID, op, nonce)))
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                for frame in self._receive(left):
                    if frame.kernel != p.SYSTEM_KERNEL_ID or frame.seq != nonce:
                        self._counts["stale_frames_in"] += 1
                        continue
                    if frame.op != p.STATUS_OK:
                        raise DeviceError(f"{self.transport.name}: system request {op} "
                                          f"answered {frame.status_name!r}")
                    return frame.payload
            if attempt < self.retries:
                self._counts["retries"] += 1
        raise DeviceError(f"no answer from {self.transport.name} to a system request after "
                          f"{self.retries} retries of {self.timeout} s: is the board "
                          "programmed with an offload bitstream and the link speed right?")

    def device_counters(self) -> dict[str, Any]:
        """The device's own counters: the link's, and per kernel in manifest order."""
        payload = self.system(p.OP_COUNTERS)
        values = struct.unpack(f"<{len(payload) // 4}I", payload[:len(payload) // 4 * 4])
        link_n = len(p.LINK_COUNTERS)
        result: dict[str, Any] = {"link": dict(zip(p.LINK_COUNTERS, values[:link_n],
                                                    strict=True))}
        per = len(p.KERNEL_COUNTERS)
        for i, entry in enumerate(self.manifest.kernels):
            chunk = values[link_n + i * per: link_n + (i + 1) * per]
            if len(chunk) == per:
                result[entry["name"]] = dict(zip(p.KERNEL_COUNTERS, chunk, strict=True))
        return result

    # -- sequenced calls ---------------------------------------------------------------------

    def exchange(self, kernel_id: int, chunks: list[bytes], flags: list[int]) -> list[Frame]:
        """Send ``chunks`` as sequenced frames, at most ``window`` in flight; the responses.

        Lost frames and lost responses are sent again (go-back-N from the oldest unanswered,
        or from where the device says it is). The device replays the response of a frame it
        already ran, so nothing runs twice.
        """
        n = len(chunks)
        base = self._next_seq
        wire = [encode_frame(Frame(kernel_id, p.OP_CALL, (base + i) & 0xFFFF, chunk, flag))
                for i, (chunk, flag) in enumerate(zip(chunks, flags, strict=True))]
        responses: list[Frame | None] = [None] * n
        sent_at = [0.0] * n
        tries = [0] * n
        oldest = next_send = 0
        while oldest < n:
            while next_send < n and next_send - oldest < self.window:
                if responses[next_send] is None:
                    self._send(wire[next_send])
                    sent_at[next_send] = time.monotonic()
                next_send += 1
            wait = sent_at[oldest] + self.timeout - time.monotonic()
            for frame in self._receive(wait):
                i = (frame.seq - base) & 0xFFFF
                if frame.kernel != kernel_id or i >= n:
                    self._counts["stale_frames_in"] += 1
                    continue
                if frame.op == p.STATUS_OUT_OF_SEQUENCE:
                    self._counts["out_of_sequence"] += 1
                    want = (int.from_bytes(frame.payload[:2], "little") - base) & 0xFFFF
                    if want >= n:
                        raise DeviceError(
                            f"{self.transport.name} expects sequence number "
                            f"{int.from_bytes(frame.payload[:2], 'little')}, outside this "
                            "exchange: another program may be using the device")
                    # Go back only if the wanted frame has not been sent again since.
                    if want < next_send and sent_at[want] <= sent_at[i]:
                        next_send = max(want, oldest)
                        self._counts["rewinds"] += 1
                    continue
                if responses[i] is None:
                    responses[i] = frame
                else:
                    self._counts["duplicate_responses"] += 1
            while oldest < n and responses[oldest] is not None:
                oldest += 1
            if oldest < n and time.monotonic() - sent_at[oldest] >= self.timeout \
                    and sent_at[oldest] > 0:
                tries[oldest] += 1
                self._counts["timeouts"] += 1
                if tries[oldest] > self.retries:
                    raise DeviceError(
                        f"no response from {self.transport.name} to frame "
                        f"{(base + oldest) & 0xFFFF} after {self.retries} retries")
                self._counts["retries"] += 1
                next_send = oldest
        self._next_seq = (base + n) & 0xFFFF
        return responses  # type: ignore[return-value]

    def send_raw(self, data: bytes, *, seq: int | None = None, wait: float | None = None
                 ) -> Frame | None:
        """Send ``data`` as it is (for diagnostics and tests); the response, or None.

        ``seq`` is the sequence number of the frame in ``data``, if it is a sequenced frame
        (use :meth:`next_seq`): the driver then waits for that response and moves past it.
        Without it, the first response to arrive is returned.
        """
        self._send(data)
        deadline = time.monotonic() + (self.timeout if wait is None else wait)
        while (left := deadline - time.monotonic()) > 0:
            for frame in self._receive(left):
                if seq is None or frame.seq == seq:
                    if seq is not None and seq == self._next_seq:
                        self._next_seq = (seq + 1) & 0xFFFF
                    return frame
        return None

    def next_seq(self) -> int:
        """The sequence number the next sequenced frame will carry."""
        return self._next_seq

    def run(self, spec: KernelSpec, request: bytes) -> bytes:
        """One kernel call: the request split into frames, the kernel's response joined."""
        size = self.manifest.max_payload
        chunks = [request[i:i + size] for i in range(0, len(request), size)] or [b""]
        flags = [p.FLAG_MORE] * (len(chunks) - 1) + [0]
        responses = self.exchange(spec.id, chunks, flags)
        for frame in responses:
            if frame.op != p.STATUS_OK:
                raise DeviceError(f"{self.transport.name}: {spec.name} answered "
                                  f"{frame.status_name!r}")
        self._counts["payload_bytes_out"] += len(request)
        return responses[-1].payload

    def counters(self) -> dict[str, Any]:
        """The host side's figures: frames, bytes, retries, timeouts, rewinds."""
        return {"transport": self.transport.name, **dict(self._counts)}

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            self._dead = self._dead or "closed"
            if self._on_close is not None:
                self._on_close()
