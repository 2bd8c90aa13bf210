"""The records the queue arbitration kernels take and answer, as both ends pack them.

**The scheduler** (``scheduler``). A request is a trace of arrivals, one
:data:`ARRIVAL_BYTES`-byte record each, in trace order (a packet's index is its place in the
request)::

    bytes 0-3  time    u32, little-endian: the cycle the packet arrives in (not decreasing)
    bytes 4-5  length  u16: the packet's length in bytes (1 or more)
    byte  6    queue   u8:  the queue it joins (below the kernel's ``queues``)
    byte  7    unused  (ignored)

The response is the departures in order, one :data:`DEPARTURE_BYTES`-byte record each::

    bytes 0-5  time    u48: the cycle the packet departs in
    byte  6    queue   u8
    byte  7    0

A departure's length and packet index are not sent: the k-th departure from a queue is the
k-th arrival to it (each queue is first in, first out), so the host takes both from the trace.

**The PIFO** (``pifo``). A request is a batch of operations, one :data:`OP_BYTES`-byte record
each::

    byte  0    kind    u8:  PUSH (1) or POP (2)
    byte  1    unused  (ignored)
    bytes 2-3  rank    u16 (a push's; ignored in a pop)
    bytes 4-7  item    u32 (a push's; ignored in a pop)

The response is one :data:`POPPED_BYTES`-byte record for each pop, in order::

    bytes 0-1  rank    u16
    bytes 2-3  0
    bytes 4-7  item    u32

and, when the kernel refuses an operation (a push to a full PIFO, a pop from an empty one, a
kind that is neither, a record cut short), one last record that says which and why, before
the response ends with ``error``::

    byte  0    why     u8:  FULL (1), EMPTY (2), BAD_KIND (3), CUT (4)
    bytes 1-2  0
    byte  3    REFUSED (0xFF), where a pop's record has 0
    bytes 4-7  the operation's number in the request, u32

(the host cannot tell on its own which operation a stateful kernel refused).
"""

from __future__ import annotations

import struct

__all__ = ["ARRIVAL_BYTES", "DEPARTURE_BYTES", "OP_BYTES", "POPPED_BYTES", "PUSH", "POP",
           "MAX_QUEUES", "MAX_TIME", "MAX_LENGTH", "MAX_RANK", "MAX_ITEM", "pack_arrival",
           "unpack_departure", "pack_departure", "unpack_arrival", "pack_op", "unpack_op",
           "pack_popped", "unpack_popped", "FULL", "EMPTY", "BAD_KIND", "CUT", "REFUSED",
           "pack_refusal", "unpack_refusal"]

ARRIVAL_BYTES = 8
DEPARTURE_BYTES = 8
OP_BYTES = 8
POPPED_BYTES = 8

MAX_QUEUES = 16
MAX_TIME = (1 << 32) - 1
MAX_LENGTH = (1 << 16) - 1
MAX_RANK = (1 << 16) - 1
MAX_ITEM = (1 << 32) - 1

PUSH, POP = 1, 2
FULL, EMPTY, BAD_KIND, CUT = 1, 2, 3, 4
REFUSED = 0xFF

_ARRIVAL = struct.Struct("<IHBx")
_OP = struct.Struct("<BxHI")
_POPPED = struct.Struct("<HxxI")


def pack_arrival(time: int, queue: int, length: int) -> bytes:
    return _ARRIVAL.pack(time, length, queue)


def unpack_arrival(record: bytes) -> tuple[int, int, int]:
    """``(time, queue, length)``."""
    time, length, queue = _ARRIVAL.unpack(record)
    return time, queue, length


def pack_departure(time: int, queue: int) -> bytes:
    return time.to_bytes(6, "little") + bytes([queue, 0])


def unpack_departure(record: bytes) -> tuple[int, int]:
    """``(time, queue)``."""
    return int.from_bytes(record[:6], "little"), record[6]


def pack_op(kind: int, rank: int = 0, item: int = 0) -> bytes:
    return _OP.pack(kind, rank, item)


def unpack_op(record: bytes) -> tuple[int, int, int]:
    """``(kind, rank, item)``."""
    return _OP.unpack(record)


def pack_refusal(why: int, index: int) -> bytes:
    return bytes([why, 0, 0, REFUSED]) + index.to_bytes(4, "little")


def unpack_refusal(record: bytes) -> tuple[int, int]:
    """``(why, index)`` of a refusal record."""
    return record[0], int.from_bytes(record[4:8], "little")


def pack_popped(rank: int, item: int) -> bytes:
    return _POPPED.pack(rank, item)


def unpack_popped(record: bytes) -> tuple[int, int]:
    """``(rank, item)``."""
    return _POPPED.unpack(record)
