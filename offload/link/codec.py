"""Frames of the offload link (see ``hdl/link/protocol.py``): build, check, split a byte stream."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c
from cobs import cobs

from hdl.link import protocol as p

__all__ = ["Frame", "FrameError", "FrameSplitter", "decode_body", "decode_frame", "encode_frame",
           "frame_body", "pack_datagrams", "split_datagram", "wire_size"]



def _header_struct() -> struct.Struct:
    """``struct`` for :data:`hdl.link.protocol.HEADER`: its fields in order, little-endian
    (the layout's own packing, read without Amaranth on the hot path)."""
    codes = {8: "B", 16: "H", 32: "I", 64: "Q"}
    offset = 0
    fmt = "<"
    for name, field in p.HEADER:
        width = field.width
        if field.offset != offset or width not in codes:
            raise AssertionError(f"protocol.HEADER field {name!r} is not a whole number of "
                                 "bytes in wire order")
        fmt += codes[width]
        offset += width
    return struct.Struct(fmt)


_HEADER = _header_struct()
assert _HEADER.size == p.HEADER_SIZE
assert [name for name, _ in p.HEADER] == ["version", "kernel", "op", "flags", "seq", "length"]


class FrameError(ValueError):
    """A received frame that is not a well-formed, intact frame."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``op`` is the opcode of a request and the status of a response."""

    kernel: int
    op: int
    seq: int
    payload: bytes = b""
    flags: int = 0
    version: int = p.LINK_VERSION

    @property
    def status_name(self) -> str:
        return p.STATUS_NAMES.get(self.op, f"status {self.op}")


def frame_body(frame: Frame) -> bytes:
    """``frame`` as it is before COBS (and as a UDP datagram carries it): header, payload and
    CRC-32C."""
    body = _HEADER.pack(frame.version, frame.kernel, frame.op, frame.flags,
                        frame.seq & p.SEQ_MASK, len(frame.payload)) + frame.payload
    return body + google_crc32c.value(body).to_bytes(4, "little")


def encode_frame(frame: Frame) -> bytes:
    """The bytes on the wire for ``frame``: COBS of header, payload and CRC, then 0x00."""
    return cobs.encode(frame_body(frame)) + b"\x00"


def decode_frame(encoded: bytes) -> Frame:
    """Decode one frame's COBS bytes (without the 0x00 delimiter) and check it."""
    try:
        body = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise FrameError(f"bad COBS encoding: {exc}") from exc
    return decode_body(body)


def decode_body(body: bytes) -> Frame:
    """Check one frame before COBS (header, payload, CRC) and decode it."""
    if len(body) < p.HEADER_SIZE + p.CRC_SIZE:
        raise FrameError(f"frame of {len(body)} bytes is shorter than a header and a CRC")
    if google_crc32c.value(body[:-4]) != int.from_bytes(body[-4:], "little"):
        raise FrameError("bad CRC")
    version, kernel, op, flags, seq, length = _HEADER.unpack_from(body)
    payload = body[p.HEADER_SIZE:-4]
    if length != len(payload):
        raise FrameError(f"length field says {length} bytes, frame carries {len(payload)}")
    return Frame(kernel, op, seq, payload, flags, version)


def wire_size(payload_len: int) -> int:
    """Bytes on the wire for a frame with ``payload_len`` bytes of payload (worst-case COBS)."""
    body = p.HEADER_SIZE + payload_len + p.CRC_SIZE
    return body + (body + 253) // 254 + 1


def split_datagram(datagram: bytes) -> tuple[list[bytes], bool]:
    """The frames (before COBS) a UDP datagram of the link holds, back to back, each frame's
    length field saying where the next begins; and whether the datagram ended in bytes that are
    not a whole frame (dropped: see ``hdl/link/protocol.py``). A frame's CRC is not checked
    here."""
    frames = []
    at = 0
    while at < len(datagram):
        rest = len(datagram) - at
        if rest < p.HEADER_SIZE + p.CRC_SIZE:
            return frames, True
        length = int.from_bytes(datagram[at + p.HEADER_SIZE - 2:at + p.HEADER_SIZE], "little")
        size = p.HEADER_SIZE + length + p.CRC_SIZE
        if size > rest:
            return frames, True
        frames.append(datagram[at:at + size])
        at += size
    return frames, False


def pack_datagrams(bodies: list[bytes], limit: int = p.MAX_DATAGRAM) -> list[bytes]:
    """Frames (before COBS) packed in order into as few datagrams of at most ``limit`` bytes as
    a greedy packing gives; a frame larger than ``limit`` is a datagram of its own."""
    datagrams: list[bytes] = []
    current = bytearray()
    for body in bodies:
        if current and len(current) + len(body) > limit:
            datagrams.append(bytes(current))
            current = bytearray()
        current += body
    if current:
        datagrams.append(bytes(current))
    return datagrams


class FrameSplitter:
    """Cuts a received byte stream into frames at each 0x00."""

    def __init__(self):
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete encoded frames (delimiter removed) that ``data`` finishes."""
        if not data:
            return []
        self._partial += data
        *frames, rest = self._partial.split(b"\x00")
        self._partial = bytearray(rest)
        return [bytes(f) for f in frames if f]
