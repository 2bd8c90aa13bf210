"""Turning what users pass as "bytes" into bytes, with one clear error for everything else."""

from __future__ import annotations

import numpy as np

__all__ = ["BytesLike", "as_bytes"]

BytesLike = bytes | bytearray | memoryview | np.ndarray

_ACCEPTS = "bytes, bytearray, memoryview or a 1-D uint8 numpy array"


def as_bytes(data: object) -> bytes:
    """``data`` as ``bytes``; ``TypeError`` naming what is accepted for anything else."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray):
        return bytes(data)
    if isinstance(data, memoryview):
        if data.itemsize != 1:
            raise TypeError(f"expected {_ACCEPTS}; got a memoryview of format {data.format!r}")
        return data.tobytes()
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError(
                f"expected {_ACCEPTS}; got a numpy array of dtype {data.dtype} "
                f"and {data.ndim} dimension(s)"
            )
        return data.tobytes()
    raise TypeError(f"expected {_ACCEPTS}; got {type(data).__name__}")
