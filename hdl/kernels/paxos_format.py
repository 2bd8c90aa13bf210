"""Paxos messages: the one binary layout the gateware, the CPU models and the host share.

P4xos's fields are the starting point (message type, instance, round, voted round, acceptor
id, value), with a NACK that carries the promised round instead of P4xos's silent drop, which
leaves a proposer waiting for its timeout, and a DELIVER that a learner answers when an
instance is decided.

A message is :data:`HEADER_BYTES` bytes and then the value, ``value_bytes`` bytes (a build
parameter, 32 by default), little endian:

======  ====  ===========  =============================================================
offset  size  field        meaning
======  ====  ===========  =============================================================
0       1     ``type``     :data:`PREPARE` (1A), :data:`PROMISE` (1B), :data:`ACCEPT` (2A),
                           :data:`ACCEPTED` (2B), :data:`NACK`, :data:`DELIVER`
1       1     ``acceptor`` 1A/2A: the acceptor it is addressed to (0 to 7, the host's
                           numbering); every answer carries it back
2       2     ``reserved`` 0
4       4     ``instance`` the log position
8       4     ``round``    1A/2A: the proposer's round; 1B: the round promised; 2B: the
                           round accepted; NACK: the acceptor's promised round, which the
                           proposer must exceed; DELIVER: the round decided in
12      4     ``vround``   1B: the round the acceptor last voted in for the instance (0: it
                           never voted); otherwise 0
16      V     ``value``    2A: the value proposed; 1B: the value last voted for (zero if
                           none); 2B and DELIVER: the value accepted or decided
======  ====  ===========  =============================================================

Round 0 means "none": proposers use rounds from 1, made unique per proposer by
:func:`round_of` (the proposer's id in the low byte).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["PREPARE", "PROMISE", "ACCEPT", "ACCEPTED", "NACK", "DELIVER", "TYPE_NAMES",
           "HEADER_BYTES", "VALUE_BYTES", "MAX_ACCEPTORS", "Message", "message_bytes",
           "round_of", "pack", "unpack", "unpack_all", "layout"]

PREPARE, PROMISE, ACCEPT, ACCEPTED, NACK, DELIVER = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {PREPARE: "1A prepare", PROMISE: "1B promise", ACCEPT: "2A accept",
              ACCEPTED: "2B accepted", NACK: "NACK", DELIVER: "deliver"}

HEADER_BYTES = 16
#: The default value size, bytes.
VALUE_BYTES = 32
#: Acceptor ids are 0 to 7: the learner keeps a byte of votes per instance.
MAX_ACCEPTORS = 8

_HEADER = struct.Struct("<BBHIII")


def message_bytes(value_bytes: int = VALUE_BYTES) -> int:
    """Bytes of one message with a value of ``value_bytes``."""
    return HEADER_BYTES + value_bytes


def round_of(attempt: int, proposer: int) -> int:
    """The round of a proposer's ``attempt``-th try (from 0): unique to the proposer (1 to
    255), and growing with the attempt."""
    if not 1 <= proposer <= 255:
        raise ValueError(f"A proposer id is 1 to 255, not {proposer!r}")
    return (attempt << 8) | proposer


@dataclass(frozen=True)
class Message:
    """One message, as the host sees it."""

    type: int
    instance: int
    round: int = 0
    vround: int = 0
    value: bytes = b""
    acceptor: int = 0

    def __str__(self) -> str:
        name = TYPE_NAMES.get(self.type, f"type {self.type}")
        return (f"{name} instance {self.instance} round {self.round}"
                + (f" vround {self.vround}" if self.vround else "")
                + (f" from acceptor {self.acceptor}" if self.type in (PROMISE, ACCEPTED, NACK)
                   else ""))


def pack(message: Message, value_bytes: int = VALUE_BYTES) -> bytes:
    """``message`` in the layout; its value zero-padded to ``value_bytes``."""
    if len(message.value) > value_bytes:
        raise ValueError(f"A value is at most {value_bytes} bytes, not {len(message.value)}")
    for name, high in (("type", 0xFF), ("acceptor", 0xFF), ("instance", 0xFFFF_FFFF),
                       ("round", 0xFFFF_FFFF), ("vround", 0xFFFF_FFFF)):
        if not 0 <= getattr(message, name) <= high:
            raise ValueError(f"A message's {name} is 0 to {high}, not "
                             f"{getattr(message, name)!r}")
    return (_HEADER.pack(message.type, message.acceptor, 0, message.instance, message.round,
                         message.vround) + message.value.ljust(value_bytes, b"\0"))


def unpack(data: bytes, value_bytes: int = VALUE_BYTES) -> Message:
    """One message from its ``message_bytes(value_bytes)`` bytes."""
    if len(data) != HEADER_BYTES + value_bytes:
        raise ValueError(f"A message is {HEADER_BYTES + value_bytes} bytes, not {len(data)}")
    kind, acceptor, _, instance, round_, vround = _HEADER.unpack_from(data)
    return Message(kind, instance, round_, vround, bytes(data[HEADER_BYTES:]), acceptor)


def unpack_all(data: bytes, value_bytes: int = VALUE_BYTES) -> list[Message]:
    """The messages of a batch (a whole number of messages)."""
    size = HEADER_BYTES + value_bytes
    if len(data) % size:
        raise ValueError(f"A batch is a whole number of {size}-byte messages, not "
                         f"{len(data)} bytes")
    return [unpack(data[k:k + size], value_bytes) for k in range(0, len(data), size)]


def layout(value_bytes: int = VALUE_BYTES):
    """The message as an Amaranth ``data.StructLayout`` (for the gateware)."""
    from amaranth.lib import data

    return data.StructLayout({
        "type": 8, "acceptor": 8, "reserved": 16, "instance": 32, "round": 32, "vround": 32,
        "value": 8 * value_bytes,
    })
