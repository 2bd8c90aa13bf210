"""A plain-Python model of a device's end of the link, as hdl/link/protocol.py specifies it.

It lets the host driver be tested quickly, and with faults, without gateware; the HIL suite
then runs the same driver against the real gateware.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from hdl.link import protocol as p
from offload.link.codec import Frame, FrameError, FrameSplitter, decode_frame, encode_frame


def encode_response(kernel: int, status: int, seq: int, payload: bytes) -> bytes:
    return encode_frame(Frame(kernel, status, seq, payload, p.FLAG_RESPONSE))


class DeviceModel:
    """Byte stream in, byte stream out; ``kernels`` maps id -> (name, fn(bytes) -> bytes)."""

    def __init__(self, kernels: dict[int, tuple[str, Callable[[bytes], bytes]]], *,
                 max_payload: int = 256, window: int = p.REPLAY_WINDOW, board: str = "model"):
        self.kernels = kernels
        self.max_payload = max_payload
        self.window = window
        self.expected = 0x1234  # not zero, so a host that assumes zero is caught
        self.kept: dict[int, bytes] = {}
        self.pending: dict[int, bytearray] = {}
        self.executed: list[tuple[int, bytes]] = []  # (kernel id, message) per kernel run
        self.splitter = FrameSplitter()
        self.manifest = json.dumps({
            "link": p.LINK_VERSION, "board": board, "clock_hz": 12_000_000, "build": "model",
            "max_payload": max_payload, "max_response": p.MAX_RESPONSE, "window": window,
            "kernels": [{"name": name, "id": i, "version": 1, "params": {}}
                        for i, (name, _) in kernels.items()],
        }, separators=(",", ":")).encode()

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
            if frame.op == p.OP_MANIFEST:
                payload = self.expected.to_bytes(2, "little") + self.manifest
                return encode_response(0, p.STATUS_OK, frame.seq, payload)
            if frame.op == p.OP_COUNTERS:
                values = [0] * len(p.LINK_COUNTERS)
                for kernel_id in self.kernels:
                    values += [0] * (len(p.KERNEL_COUNTERS) - 1) + [kernel_id in self.pending]
                return encode_response(0, p.STATUS_OK, frame.seq,
                                       struct.pack(f"<{len(values)}I", *values))
            return encode_response(0, p.STATUS_BAD_OPCODE, frame.seq, b"")
        behind = (self.expected - frame.seq) & 0xFFFF
        if 1 <= behind <= self.window and frame.seq in self.kept:
            return self.kept[frame.seq]
        if frame.seq != self.expected:
            return encode_response(frame.kernel, p.STATUS_OUT_OF_SEQUENCE, frame.seq,
                                   self.expected.to_bytes(2, "little"))
        response = self.execute(frame)
        self.kept[frame.seq] = response
        self.kept.pop((frame.seq - self.window) & 0xFFFF, None)
        self.expected = (self.expected + 1) & 0xFFFF
        return response

    def execute(self, frame) -> bytes:
        def answer(status, payload=b""):
            return encode_response(frame.kernel, status, frame.seq, payload)

        if frame.kernel not in self.kernels:
            return answer(p.STATUS_UNKNOWN_KERNEL)
        if frame.op != p.OP_CALL:
            return answer(p.STATUS_BAD_OPCODE)
        if len(frame.payload) > self.max_payload:
            return answer(p.STATUS_TOO_LONG)
        message = self.pending.setdefault(frame.kernel, bytearray())
        message += frame.payload
        if frame.flags & p.FLAG_MORE:
            return answer(p.STATUS_OK)
        del self.pending[frame.kernel]
        self.executed.append((frame.kernel, bytes(message)))
        _, fn = self.kernels[frame.kernel]
        return answer(p.STATUS_OK, fn(bytes(message)))


class ModelTransport:
    """A transport whose far end is a :class:`DeviceModel` (answers arrive on the next read)."""

    def __init__(self, model: DeviceModel, name: str = "model"):
        self.model = model
        self.name = name
        self.inbox = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.inbox += self.model.feed(data)

    def read(self, timeout: float) -> bytes:
        data, self.inbox = bytes(self.inbox), bytearray()
        return data

    def close(self) -> None:
        self.closed = True
