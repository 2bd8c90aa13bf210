"""A plain-Python model of a device's end of the link, as hdl/link/protocol.py specifies it.

It lets the host driver be tested quickly, and with faults, without gateware; the HIL suite
then runs the same driver against the real gateware.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from hdl.link import protocol as p
from offload import DeviceError
from offload.link.codec import Frame, FrameError, FrameSplitter, decode_frame, encode_frame


def encode_response(kernel: int, status: int, seq: int, payload: bytes) -> bytes:
    return encode_frame(Frame(kernel, status, seq, payload, p.FLAG_RESPONSE))


def u32(value: int) -> bytes:
    return (value & p.SEQ_MASK).to_bytes(4, "little")


class DeviceModel:
    """Byte stream in, byte stream out.

    ``kernels`` maps id -> (name, fn) where ``fn(message) -> bytes | Response`` answers a
    message of operation 0, or ``fn(op, message)`` if ``ops`` (id -> operation count) says the
    kernel has several. The whole response is made when a message ends (the protocol leaves
    when a kernel answers to the kernel), the first ``max_response`` bytes in the last frame's
    response and the rest in continuations."""

    def __init__(self, kernels: dict[int, tuple[str, Callable]], *,
                 max_payload: int = 256, window: int = p.REPLAY_WINDOW, board: str = "model",
                 expected: int = 0xFFFF_FFF0, max_response: int = 64,
                 ops: dict[int, int] | None = None, params: dict[int, dict] | None = None):
        self.kernels = kernels
        self.max_payload = max_payload
        self.max_response = max_response
        self.ops = ops or {}
        self.window = window
        self.initial_expected = expected  # near the wrap, so that the host must handle it
        self.executed: list[tuple[int, bytes]] = []  # (kernel id, message) per kernel run
        self.executed_seqs: list[list[int]] = []  # numbers of executed frames, per power-on
        self.manifest = json.dumps({
            "link": p.LINK_VERSION, "board": board, "clock_hz": 12_000_000, "build": "model",
            "max_payload": max_payload, "max_response": max_response, "window": window,
            "kernels": [{"name": name, "id": i, "version": _version(name),
                         "params": (params or {}).get(i, _params(name))}
                        for i, (name, _) in kernels.items()],
        }, separators=(",", ":")).encode()
        self.restart()

    def restart(self) -> None:
        """Power-cycle: the link state goes, as on a board that is reset."""
        self.expected = self.initial_expected
        self.executed_seqs.append([])
        self.kept: dict[int, bytes] = {}
        self.pending: dict[int, bytearray] = {}  # open messages
        self.unsent: dict[int, tuple[bytes, bool]] = {}  # responses still to be fetched
        self.resets: list[int] = []
        self.splitter = FrameSplitter()

    def feed(self, data: bytes) -> bytes:
        out = b""
        for raw in self.splitter.feed(data):
            try:
                frame = decode_frame(raw)
            except FrameError:
                continue  # dropped, as the gateware drops it
            out += self.handle(frame)
        return out

    def handle(self, frame) -> bytes:
        if frame.kernel == p.SYSTEM_KERNEL_ID:
            return self.system(frame)
        behind = (self.expected - frame.seq) & p.SEQ_MASK
        if 1 <= behind <= self.window and frame.seq in self.kept:
            return self.kept[frame.seq]
        if frame.seq != self.expected:
            return encode_response(frame.kernel, p.STATUS_OUT_OF_SEQUENCE, frame.seq,
                                   u32(self.expected))
        response = self.execute(frame)
        self.executed_seqs[-1].append(frame.seq)
        self.kept[frame.seq] = response
        self.kept.pop((frame.seq - self.window) & p.SEQ_MASK, None)
        self.expected = (self.expected + 1) & p.SEQ_MASK
        return response

    def system(self, frame) -> bytes:
        if frame.op == p.OP_MANIFEST:
            return encode_response(0, p.STATUS_OK, frame.seq, u32(self.expected) + self.manifest)
        if frame.op == p.OP_COUNTERS:
            values = [0] * len(p.LINK_COUNTERS)
            for kernel_id in self.kernels:
                values += [0] * (len(p.KERNEL_COUNTERS) - 1) + [kernel_id in self.pending]
            return encode_response(0, p.STATUS_OK, frame.seq,
                                   struct.pack(f"<{len(values)}I", *values))
        if frame.op == p.OP_SYNC:
            if len(frame.payload) < 4:
                return encode_response(0, p.STATUS_BAD_FRAME, frame.seq, b"")
            target = int.from_bytes(frame.payload[:4], "little")
            if 0 < (target - self.expected) & p.SEQ_MASK < 1 << 31:
                self.expected = target
                self.kept.clear()
            return encode_response(0, p.STATUS_OK, frame.seq, u32(self.expected))
        return encode_response(0, p.STATUS_BAD_OPCODE, frame.seq, b"")

    def execute(self, frame) -> bytes:
        def answer(status, payload=b"", flags=0):
            return encode_frame(Frame(frame.kernel, status, frame.seq, payload,
                                      p.FLAG_RESPONSE | flags))

        if frame.kernel not in self.kernels:
            return answer(p.STATUS_UNKNOWN_KERNEL)
        if frame.op == p.OP_RESET:
            self.pending.pop(frame.kernel, None)
            self.unsent.pop(frame.kernel, None)
            self.resets.append(frame.kernel)
            return answer(p.STATUS_OK)
        if frame.op >= self.ops.get(frame.kernel, 1):
            return answer(p.STATUS_BAD_OPCODE)
        if len(frame.payload) > self.max_payload:
            return answer(p.STATUS_TOO_LONG)
        if frame.flags & p.FLAG_CONTINUE:
            if frame.payload:
                return answer(p.STATUS_BAD_FRAME)
            return self.send_part(frame.kernel, answer)
        self.unsent.pop(frame.kernel, None)  # a new message drops what was not fetched
        message = self.pending.setdefault(frame.kernel, bytearray())
        message += frame.payload
        if frame.flags & p.FLAG_MORE:
            return answer(p.STATUS_OK)
        del self.pending[frame.kernel]
        self.executed.append((frame.kernel, bytes(message)))
        _, fn = self.kernels[frame.kernel]
        result = fn(frame.op, bytes(message)) if frame.kernel in self.ops else fn(bytes(message))
        data, error = (result, False) if isinstance(result, bytes) else (result.data,
                                                                          result.error)
        self.unsent[frame.kernel] = (data, error)
        return self.send_part(frame.kernel, answer)

    def send_part(self, kernel: int, answer) -> bytes:
        if kernel not in self.unsent:
            return answer(p.STATUS_OK)
        data, error = self.unsent.pop(kernel)
        part, rest = data[:self.max_response], data[self.max_response:]
        if rest:
            self.unsent[kernel] = (rest, error)
            return answer(p.STATUS_OK, part, p.FLAG_MORE)
        return answer(p.STATUS_KERNEL_ERROR if error else p.STATUS_OK, part)


def _version(name: str) -> int:
    from offload import kernels

    try:
        return kernels.get(name).version
    except KeyError:
        return 1


def _params(name: str) -> dict:
    from offload import kernels

    try:
        return kernels.get(name).resolve()
    except KeyError:
        return {}


class ModelTransport:
    """A transport whose far end is a :class:`DeviceModel` (answers arrive on the next read)."""

    def __init__(self, model: DeviceModel, name: str = "model"):
        self.model = model
        self.name = name
        self.inbox = bytearray()
        self.closed = False
        self.opens = 1

    def write(self, data: bytes) -> None:
        if self.closed:
            raise DeviceError(f"{self.name}: write failed: closed")
        self.inbox += self.model.feed(data)

    def read(self, timeout: float) -> bytes:
        if self.closed:
            raise DeviceError(f"{self.name}: read failed: closed")
        data, self.inbox = bytes(self.inbox), bytearray()
        return data

    def reopen(self) -> None:
        self.closed = False
        self.inbox = bytearray()
        self.opens += 1

    def close(self) -> None:
        self.closed = True
