"""A plain-Python reference for the link's frames, built from the ``cobs`` and
``google_crc32c`` packages, to drive and check the gateware."""

from dataclasses import dataclass

import google_crc32c
from cobs import cobs

from hdl.link.protocol import CRC_SIZE, HEADER_SIZE, LINK_VERSION, OP_CALL, SEQ_BITS

__all__ = ["Response", "ref_request", "ref_frame", "parse_responses"]


def ref_frame(body: bytes, *, crc_error: int = 0) -> bytes:
    """A decoded frame's body (header and payload) with its CRC-32C appended, COBS-encoded and
    delimited. ``crc_error`` is XORed into the CRC."""
    crc = (google_crc32c.value(body) ^ crc_error).to_bytes(CRC_SIZE, "little")
    return cobs.encode(body + crc) + b"\0"


def ref_request(kernel: int, seq: int, payload: bytes = b"", *, opcode: int = OP_CALL,
                flags: int = 0, version: int = LINK_VERSION, length: int | None = None,
                crc_error: int = 0) -> bytes:
    """The link bytes of one request frame. ``length`` overrides the payload length field and
    ``crc_error`` is XORed into the CRC."""
    length = len(payload) if length is None else length
    header = bytes([version, kernel, opcode, flags])
    header += seq.to_bytes(SEQ_BITS // 8, "little") + length.to_bytes(2, "little")
    return ref_frame(header + payload, crc_error=crc_error)


@dataclass
class Response:
    version: int
    kernel: int
    status: int
    flags: int
    seq: int
    payload: bytes


def parse_responses(link: bytes) -> list[Response]:
    """Split link bytes into response frames, checking each one's encoding, CRC and length."""
    frames = link.split(b"\0")
    assert frames[-1] == b"", "link bytes do not end with a delimiter"
    responses = []
    for encoded in frames[:-1]:
        frame = cobs.decode(encoded)
        assert len(frame) >= HEADER_SIZE + CRC_SIZE, frame.hex()
        body, crc = frame[:-CRC_SIZE], frame[-CRC_SIZE:]
        assert google_crc32c.value(body) == int.from_bytes(crc, "little"), frame.hex()
        length = int.from_bytes(body[8:10], "little")
        assert length == len(body) - HEADER_SIZE, frame.hex()
        responses.append(Response(
            version=body[0], kernel=body[1], status=body[2], flags=body[3],
            seq=int.from_bytes(body[4:8], "little"), payload=body[HEADER_SIZE:],
        ))
    return responses
