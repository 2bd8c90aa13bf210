"""The host end of the link: sequenced frames, several in flight, retries, resynchronisation.

The same driver talks to a real board over its UART and to a virtual board over TCP; only the
transport underneath differs. It keeps the host's rules of :mod:`hdl.link.protocol`: after any
failed exchange it resynchronises before the next call (so no call is ever answered with an
earlier request's response), it reconnects to a device that went away, and it backs off from
one that stays away so that a dead board costs a caller little.
"""

from __future__ import annotations

import bisect
import json
import logging
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdl.link import protocol as p

from ..errors import DeviceError, OffloadError
from ..kernels import KernelSpec, Operation, Response
from .codec import Frame, FrameError, FrameSplitter, decode_frame, encode_frame
from .transport import Transport

__all__ = ["Manifest", "LinkBackend", "LinkFailure"]

log = logging.getLogger("offload.link")


class LinkFailure(DeviceError):
    """An exchange that failed in a way that leaves the link's sequencing unknown (no answer
    within the retry budget, the connection gone, an answer that cannot be placed): the next
    call resynchronises first."""


def _ahead(a: int, b: int) -> bool:
    """Whether sequence number ``a`` is ahead of ``b`` (modulo 2**32, as the device compares)."""
    return 0 < (a - b) & p.SEQ_MASK < 1 << (p.SEQ_BITS - 1)


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
        if len(payload) < 4:
            raise DeviceError("the device's manifest is empty")
        try:
            doc = json.loads(payload[4:].decode("utf-8"))
            return cls(
                expected_seq=int.from_bytes(payload[:4], "little"),
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

    Safe to share between threads: calls are serialised (one exchange at a time on the link).

    Parameters
    ----------
    transport : Transport
        The byte pipe (see :class:`~offload.link.transport.SerialTransport`).
    timeout : float
        Seconds to wait for a response before sending the frame again.
    retries : int
        How many times one frame is sent again before the exchange fails.
    on_close : callable, optional
        Called after the transport is closed (a virtual board uses it to stop).
    backoff : (float, float)
        After a failed attempt to reach the device again, later calls fail at once (and fall
        back, where policy allows) for the first figure in seconds, doubling after each further
        failed attempt up to the second. The first attempt after a failure is made at once.
    """

    def __init__(self, transport: Transport, *, timeout: float = 0.5, retries: int = 8,
                 on_close=None, backoff: tuple[float, float] = (0.25, 4.0)):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, most) with 0 < first <= most, not "
                             f"{backoff!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._on_close = on_close
        self._backoff_range = backoff
        self._lock = threading.RLock()
        self._splitter = FrameSplitter()
        self._counts: Counter[str] = Counter()
        # System requests carry a nonce; starting at random makes a stale answer from another
        # host's earlier session (bytes left in a UART's buffers) all but impossible to match.
        self._nonce = random.getrandbits(p.SEQ_BITS)
        self._next_seq = 0
        self._max_sent: int | None = None  # highest sequence number this host has sent
        self._closed = False
        self._transport_dead: str | None = None  # why the transport failed, until reopened
        self._ready = False  # sequencing known: the next exchange may start
        self._cause = ""  # why the link is not ready
        self._backoff = 0.0
        self._next_attempt = 0.0
        self.manifest = self._read_manifest()
        self._resync(self.manifest)

    # -- connection state --------------------------------------------------------------------

    def _read_manifest(self) -> Manifest:
        manifest = Manifest.parse(self.system(p.OP_MANIFEST))
        if manifest.link != p.LINK_VERSION:
            raise DeviceError(
                f"{self.transport.name} speaks link version {manifest.link}; this offload "
                f"speaks {p.LINK_VERSION}: rebuild the bitstream or update offload"
            )
        return manifest

    def _resync(self, manifest: Manifest | None = None) -> None:
        """Make the device's sequencing and the host's one again (see protocol.py's rules)."""
        if manifest is None:
            manifest = self._read_manifest()
        if manifest.build != self.manifest.build or manifest.kernels != self.manifest.kernels:
            log.warning("%s: the device is now build %s (was %s)", self.transport.name,
                        manifest.build, self.manifest.build)
        self.manifest = manifest
        self.window = max(1, min(manifest.window, p.REPLAY_WINDOW))
        self.kernels = self._usable_kernels()
        target = (manifest.expected_seq + p.SYNC_GAP) & p.SEQ_MASK
        if self._max_sent is not None and _ahead(self._max_sent + 1, target):
            target = (self._max_sent + 1) & p.SEQ_MASK
        answer = self.system(p.OP_SYNC, target.to_bytes(4, "little"))
        now = int.from_bytes(answer[:4], "little")
        if len(answer) < 4 or now != target:
            raise LinkFailure(f"{self.transport.name} did not take the sequence number "
                              f"{target} (it expects {now}): another host may be using it")
        self._next_seq = target
        self._counts["resyncs"] += 1
        self._ready = True  # in step: the exchanges that end open messages may run
        self._close_open_messages()

    def _close_open_messages(self) -> None:
        # An abandoned multi-frame message (this host's, or a host that died) is still open on
        # the device; the next call to that kernel would be appended to it. End it, and drop
        # what the kernel answers.
        counters = self.device_counters()
        for entry in self.manifest.kernels:
            if counters.get(entry["name"], {}).get("open_message"):
                log.info("%s: %s had a message left open; ending it", self.transport.name,
                         entry["name"])
                self.exchange(entry["id"], [(p.OP_CALL, 0, b"")])
                self._counts["messages_closed"] += 1

    def _usable_kernels(self) -> frozenset[str]:
        from .. import kernels as registry

        usable = set()
        self._kernel_params: dict[str, dict[str, int]] = {}
        for entry in self.manifest.kernels:
            try:
                spec = registry.get(entry["name"])
            except (KeyError, TypeError):
                continue  # a kernel this offload does not know: nothing to call it with
            if entry.get("id") != spec.id or entry.get("version") != spec.version:
                log.warning("%s: %s on the device is id %s version %s, offload expects id %s "
                            "version %s: not used", self.transport.name, spec.name,
                            entry.get("id"), entry.get("version"), spec.id, spec.version)
                continue
            try:
                # Every parameter named, as the device reports them: the CPU path (a fallback,
                # a model) then computes exactly what this gateware computes.
                params = spec.resolve(entry.get("params", {}))
            except OffloadError as exc:
                log.warning("%s: %s on the device has parameters offload cannot honour: %s: "
                            "not used", self.transport.name, spec.name, exc)
                continue
            usable.add(spec.name)
            self._kernel_params[spec.name] = params
        return frozenset(usable)

    def kernel_params(self, name: str) -> dict[str, int]:
        """The parameters the device's kernel ``name`` was built with (from its manifest)."""
        return dict(self._kernel_params[name])

    def _fail(self, exc: Exception) -> None:
        """An exchange failed: the link must be resynchronised before it is used again."""
        self._ready = False
        self._cause = str(exc)
        self._counts["failed_exchanges"] += 1

    def ensure_ready(self) -> None:
        """Reconnect and resynchronise if an earlier exchange failed; DeviceError if that
        cannot be done now (at once, without trying, while backing off)."""
        with self._lock:
            if self._closed:
                raise DeviceError(f"{self.transport.name} is closed")
            if self._ready:
                return
            now = time.monotonic()
            if now < self._next_attempt:
                self._counts["calls_refused_while_down"] += 1
                raise DeviceError(f"{self.transport.name} is unreachable: {self._cause}")
            try:
                if self._transport_dead is not None:
                    self.transport.reopen()
                    self._transport_dead = None
                    self._splitter = FrameSplitter()
                    self._counts["reconnects"] += 1
                self._resync()
            except DeviceError as exc:
                self._cause = str(exc)
                self._backoff = min(max(2 * self._backoff, self._backoff_range[0]),
                                    self._backoff_range[1])
                self._next_attempt = time.monotonic() + self._backoff
                raise DeviceError(f"{self.transport.name} is unreachable: {exc}") from exc
            self._backoff = 0.0
            self._next_attempt = 0.0

    @property
    def ready(self) -> bool:
        """Whether the link is in step with the device (no failed exchange since)."""
        return self._ready

    # -- low level ---------------------------------------------------------------------------

    def _transport_failed(self, exc: DeviceError) -> LinkFailure:
        self._transport_dead = str(exc)
        self._ready = False
        return LinkFailure(str(exc))

    def _send(self, data: bytes) -> None:
        if self._transport_dead is not None:
            raise LinkFailure(f"{self.transport.name} is gone: {self._transport_dead}")
        try:
            self.transport.write(data)
        except DeviceError as exc:
            raise self._transport_failed(exc) from exc
        self._counts["frames_out"] += 1
        self._counts["wire_bytes_out"] += len(data)

    def _receive(self, timeout: float) -> list[Frame]:
        if self._transport_dead is not None:
            raise LinkFailure(f"{self.transport.name} is gone: {self._transport_dead}")
        try:
            data = self.transport.read(max(0.0, timeout))
        except DeviceError as exc:
            raise self._transport_failed(exc) from exc
        self._counts["wire_bytes_in"] += len(data)
        frames = []
        for raw in self._splitter.feed(data):
            try:
                frame = decode_frame(raw)
            except FrameError:
                self._counts["bad_frames_in"] += 1
                continue
            if not frame.flags & p.FLAG_RESPONSE:
                self._counts["echoed_frames_in"] += 1
                continue
            if frame.kernel == p.SYSTEM_KERNEL_ID and frame.op == p.STATUS_BUSY:
                text = frame.payload.decode("utf-8", "replace") or "busy"
                raise self._transport_failed(DeviceError(
                    f"{self.transport.name}: {text}; close the other host's connection first"))
            frames.append(frame)
        self._counts["frames_in"] += len(frames)
        return frames

    # -- system kernel -----------------------------------------------------------------------

    def system(self, op: int, payload: bytes = b"") -> bytes:
        """Ask the system kernel (unsequenced: asked again under a new nonce on a timeout)."""
        with self._lock:
            for attempt in range(self.retries + 1):
                self._nonce = (self._nonce + 1) & p.SEQ_MASK
                nonce = self._nonce
                self._send(encode_frame(Frame(p.SYSTEM_KERNEL_ID, op, nonce, payload)))
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
            raise LinkFailure(
                f"no answer from {self.transport.name} to a system request after "
                f"{self.retries} retries of {self.timeout} s: is the board programmed with an "
                "offload bitstream and the link speed right?")

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

    def exchange(self, kernel_id: int, frames: Sequence[tuple[int, int, bytes]]
                 ) -> list[Frame]:
        """Send ``frames`` ((opcode, flags, payload) each) as sequenced frames to kernel
        ``kernel_id``, at most ``window`` in flight; their responses, in order.

        Lost frames and lost responses are sent again (go-back-N from the oldest unanswered,
        or from where the device says it is). The device replays the response of a frame it
        already ran, so nothing runs twice. Raises :class:`LinkFailure` (and leaves the link
        to be resynchronised) if the exchange cannot be completed.
        """
        with self._lock:
            if not self._ready:
                raise LinkFailure(f"{self.transport.name} is not in step: {self._cause}")
            try:
                return self._exchange(kernel_id, frames)
            except LinkFailure as exc:
                self._fail(exc)
                raise

    def _exchange(self, kernel_id: int, frames: Sequence[tuple[int, int, bytes]]
                  ) -> list[Frame]:
        n = len(frames)
        if n >= 1 << (p.SEQ_BITS - 1):
            raise DeviceError(f"an exchange of {n} frames would wrap the sequence numbers")
        base = self._next_seq
        wire: dict[int, bytes] = {}  # encoded frames in the window, kept for resending

        def encoded(i: int) -> bytes:
            if i not in wire:
                seq = (base + i) & p.SEQ_MASK
                op, flags, payload = frames[i]
                wire[i] = encode_frame(Frame(kernel_id, op, seq, payload, flags))
            return wire[i]

        responses: list[Frame | None] = [None] * n
        sent_at: dict[int, float] = {}
        tries = 0  # timeouts of the current oldest frame
        oldest = next_send = 0
        sent_hi = -1  # the highest index sent so far (next_send goes back on a resend)
        while oldest < n:
            while next_send < n and next_send - oldest < self.window:
                if responses[next_send] is None:
                    self._send(encoded(next_send))
                    sent_at[next_send] = time.monotonic()
                    if next_send > sent_hi:
                        sent_hi = next_send
                        self._max_sent = (base + next_send) & p.SEQ_MASK
                next_send += 1
            wait = sent_at[oldest] + self.timeout - time.monotonic()
            for frame in self._receive(wait):
                i = (frame.seq - base) & p.SEQ_MASK
                if frame.kernel != kernel_id or i > sent_hi:
                    self._counts["stale_frames_in"] += 1
                    continue
                if i < oldest:
                    self._counts["duplicate_responses"] += 1
                    continue
                if frame.op == p.STATUS_OUT_OF_SEQUENCE:
                    self._counts["out_of_sequence"] += 1
                    expected = int.from_bytes(frame.payload[:4], "little")
                    want = (expected - base) & p.SEQ_MASK
                    if want > n or len(frame.payload) < 4:
                        raise LinkFailure(
                            f"{self.transport.name} expects sequence number {expected}, "
                            "outside this exchange: the device was reset, or another host "
                            "is using it")
                    # Go back only if the wanted frame has not been sent again since.
                    if want < next_send and sent_at.get(want, 0.0) <= sent_at.get(i, 0.0):
                        next_send = max(want, oldest)
                        self._counts["rewinds"] += 1
                    continue
                if responses[i] is None:
                    responses[i] = frame
                else:
                    self._counts["duplicate_responses"] += 1
            moved = False
            while oldest < n and responses[oldest] is not None:
                wire.pop(oldest, None)
                sent_at.pop(oldest, None)
                oldest += 1
                moved = True
            if moved:
                tries = 0
            if oldest < n and oldest in sent_at \
                    and time.monotonic() - sent_at[oldest] >= self.timeout:
                tries += 1
                self._counts["timeouts"] += 1
                if tries > self.retries:
                    raise LinkFailure(
                        f"no response from {self.transport.name} to frame "
                        f"{(base + oldest) & p.SEQ_MASK} after {self.retries} retries")
                self._counts["retries"] += 1
                next_send = oldest
        self._next_seq = (base + n) & p.SEQ_MASK
        return responses  # type: ignore[return-value]

    def send_raw(self, data: bytes, *, seq: int | None = None, wait: float | None = None
                 ) -> Frame | None:
        """Send ``data`` as it is (for diagnostics and tests); the response, or None.

        ``seq`` is the sequence number of the frame in ``data``, if it is a sequenced frame
        (use :meth:`next_seq`): the driver then waits for that response and moves past it.
        Without it, the first response to arrive is returned.
        """
        with self._lock:
            self._send(data)
            if seq is not None:
                if self._max_sent is None or _ahead(seq, self._max_sent):
                    self._max_sent = seq
            deadline = time.monotonic() + (self.timeout if wait is None else wait)
            while (left := deadline - time.monotonic()) > 0:
                for frame in self._receive(left):
                    if seq is None or frame.seq == seq:
                        if seq is not None and seq == self._next_seq:
                            self._next_seq = (seq + 1) & p.SEQ_MASK
                        return frame
            return None

    def next_seq(self) -> int:
        """The sequence number the next sequenced frame will carry."""
        return self._next_seq

    def run(self, spec: KernelSpec, op: Operation, messages: Sequence[bytes],
            params: Mapping[str, int]) -> list[Response]:
        """Run request ``messages`` of operation ``op`` on kernel ``spec``, pipelined in one
        exchange; each message's response (bytes joined across frames, and its error flag).

        Frames are sized so that what the kernel answers while one runs fits in a response
        frame, and each message is followed by as many continuation frames as its largest
        response could need (see protocol.py). A call to a stateless kernel whose exchange
        fails is run once more after the link is resynchronised (running it twice changes
        nothing); a stateful kernel's is not, since whether it ran is then unknown.
        """
        plan = _Plan(self.manifest, spec, op, messages, params)
        with self._lock:
            for attempt in range(2):
                self.ensure_ready()
                try:
                    frames = self.exchange(spec.id, plan)
                except LinkFailure:
                    if attempt or spec.stateful:
                        raise
                    self._counts["calls_run_again"] += 1
                    continue
                break
            responses = plan.responses(frames, self.transport.name)
            self._counts["payload_bytes_out"] += plan.request_bytes
            self._counts["payload_bytes_in"] += sum(len(r.data) for r in responses)
            return responses

    def reset(self, spec: KernelSpec) -> None:
        """OP_RESET: the kernel back to its power-on state, exactly once."""
        with self._lock:
            self.ensure_ready()
            frame = self.exchange(spec.id, [(p.OP_RESET, 0, b"")])[0]
            if frame.op != p.STATUS_OK:
                raise DeviceError(f"{self.transport.name}: resetting {spec.name} was answered "
                                  f"{frame.status_name!r}")

    def invalidate(self, reason: str) -> None:
        """Distrust the link (a response that could not be decoded): resync before the next
        call."""
        with self._lock:
            self._fail(LinkFailure(reason))

    def counters(self) -> dict[str, Any]:
        """The host side's figures: frames, bytes, retries, timeouts, rewinds, resyncs,
        reconnects; and whether the link is up."""
        with self._lock:
            return {"transport": self.transport.name, "ready": self._ready,
                    **dict(self._counts)}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.transport.close()
            finally:
                self._transport_dead = self._transport_dead or "closed"
                if self._on_close is not None:
                    self._on_close()


class _Plan(Sequence[tuple[int, int, bytes]]):
    """The frames of a call: each message cut into request frames, then its continuations.

    Frames are made as the window reaches them (a 100 MiB call is not copied into 100,000
    pieces up front); ``responses`` joins what came back into one response per message.
    """

    def __init__(self, manifest: Manifest, spec: KernelSpec, op: Operation,
                 messages: Sequence[bytes], params: Mapping[str, int]):
        self.spec, self.op = spec, op
        self.opcode = spec.opcode(op)
        slot = manifest.max_response
        if op.expansion > 0:
            holdback = op.holdback_for(params)
            if holdback >= slot:
                raise DeviceError(f"{spec.name}.{op.name} may hold back {holdback} response "
                                  f"bytes, more than the device's {slot}-byte response frames")
            chunk = int((slot - holdback) / op.expansion)
            chunk = max(1, min(manifest.max_payload, chunk))
        else:
            chunk = manifest.max_payload
        self._views = [memoryview(m) for m in messages]
        self._chunk = chunk
        # Per message: index of its first frame, its request frames, its continuations.
        self._layout: list[tuple[int, int, int]] = []
        first = 0
        for message in self._views:
            requests = max(1, -(-len(message) // chunk))
            largest = op.max_response(params, len(message))
            continuations = max(0, -(-largest // slot) - 1)
            self._layout.append((first, requests, continuations))
            first += requests + continuations
        self._n = first
        self._starts = [start for start, _, _ in self._layout]
        self.request_bytes = sum(len(v) for v in self._views)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if not 0 <= i < self._n:
            raise IndexError(i)
        m = bisect.bisect_right(self._starts, i) - 1
        first, requests, _ = self._layout[m]
        k = i - first
        if k >= requests:
            return (self.opcode, p.FLAG_CONTINUE, b"")
        flags = p.FLAG_MORE if k < requests - 1 else 0
        return (self.opcode, flags, bytes(self._views[m][k * self._chunk:(k + 1) * self._chunk]))

    def responses(self, frames: Sequence[Frame], where: str) -> list[Response]:
        name = f"{self.spec.name}.{self.op.name}"
        out = []
        for first, requests, continuations in self._layout:
            mine = frames[first:first + requests + continuations]
            error = False
            for frame in mine:
                if frame.op == p.STATUS_KERNEL_ERROR:
                    error = True
                elif frame.op != p.STATUS_OK:
                    raise DeviceError(f"{where}: {name} answered {frame.status_name!r}")
            if mine[-1].flags & p.FLAG_MORE:
                raise DeviceError(f"{where}: {name} answered more than it declares it can for "
                                  "a request of that size (its max_response)")
            out.append(Response(b"".join(frame.payload for frame in mine), error))
        return out
