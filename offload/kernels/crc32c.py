"""CRC-32C: the CPU path (the reference and the fallback) and the request codec."""

from __future__ import annotations

import google_crc32c

from ._bytes import BytesLike, as_bytes

__all__ = ["cpu", "encode", "decode"]


def cpu(data: BytesLike) -> int:
    """CRC-32C (Castagnoli; iSCSI, ext4) of ``data`` on the CPU."""
    return google_crc32c.value(as_bytes(data))


def encode(data: BytesLike) -> bytes:
    """A call's request message: the bytes themselves."""
    return as_bytes(data)


def decode(response: bytes) -> int:
    """The kernel's response, four bytes least significant first, as an int."""
    if len(response) != 4:
        raise ValueError(f"a CRC-32C response is 4 bytes, got {len(response)}")
    return int.from_bytes(response, "little")
