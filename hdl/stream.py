"""The byte-stream payloads every offload kernel speaks.

A message is a run of beats ending in one with ``last`` set. Each beat carries ``width`` bytes
in ``data``, the first byte of the message in the low 8 bits. Beats before the last are full;
the last beat says in ``nbytes`` how many of its bytes (0 to ``width``) count, so that an empty
message is a single beat with ``last`` and ``nbytes == 0``. ``error`` is raised by a kernel on
the last beat of a response to malformed input; kernels ignore it on their input.

A kernel takes requests on ``i_stream: In(request_stream(width))`` and answers on
``o_stream: Out(byte_stream(width))``. A request beat carries, besides the fields of
:func:`byte_layout` (at the same bit offsets), ``op``: the opcode of the frame the beat came in,
an index into the kernel's ``operations`` (a tuple of operation names, at most
:data:`hdl.link.protocol.MAX_OPERATIONS`). Every beat of a message carries the same ``op``.
"""

from amaranth.hdl import unsigned
from amaranth.lib import data, stream

__all__ = ["WIDTHS", "byte_layout", "byte_stream", "request_layout", "request_stream"]

#: Beat widths in bytes that kernels support.
WIDTHS = (1, 2, 4, 8)


def _byte_fields(width: int) -> dict:
    if not isinstance(width, int) or isinstance(width, bool):
        raise TypeError(f"Beat width must be an integer, not {width!r}")
    if width not in WIDTHS:
        raise ValueError(f"Beat width must be one of {WIDTHS} bytes, not {width!r}")
    return {
        "data": unsigned(8 * width),
        "nbytes": unsigned(width.bit_length()),
        "last": unsigned(1),
        "error": unsigned(1),
    }


def byte_layout(width: int) -> data.StructLayout:
    """Payload layout of a ``width``-byte-per-beat message stream."""
    return data.StructLayout(_byte_fields(width))


def byte_stream(width: int) -> stream.Signature:
    """Stream signature of a ``width``-byte-per-beat message stream."""
    return stream.Signature(byte_layout(width))


def request_layout(width: int) -> data.StructLayout:
    """Payload layout of a kernel's request stream: :func:`byte_layout`'s fields at the same
    offsets, then ``op`` (8 bits), the operation the message asks for."""
    return data.StructLayout({**_byte_fields(width), "op": unsigned(8)})


def request_stream(width: int) -> stream.Signature:
    """Stream signature of a kernel's ``width``-byte-per-beat request stream."""
    return stream.Signature(request_layout(width))
