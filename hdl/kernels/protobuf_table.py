"""The field table of a protobuf schema: what the protobuf kernel's gateware is built from.

The host (``offload.kernels.protobuf``) flattens a proto3 message type into a :class:`Table`;
the gateware (:mod:`hdl.kernels.protobuf`) turns the table into constant logic (ProtoACC's
descriptor table, fixed at build time), and the CPU path lays out its records from the same
table, so the two cannot disagree about where a field is.

Records
-------
A *record* is a message's values at fixed places, ``Table.record_size`` bytes, little endian,
packed (numpy's ``dtype(..., align=False)``); the top-level message's fields in field-number
order, each as follows:

==========================================  ================================================
int32, sint32, sfixed32, enum               4 bytes, signed
uint32, fixed32                             4 bytes, unsigned
int64, sint64, sfixed64                     8 bytes, signed
uint64, fixed64                             8 bytes, unsigned
bool                                        1 byte (encode reads any non-zero byte as true;
                                            decode writes 0 or 1)
float, double                               4, 8 bytes, IEEE 754
string, bytes                               ``len`` (2 bytes) then ``data`` (``max_bytes``
                                            bytes); the bytes past ``len`` are zero
repeated scalar                             ``count`` (2 bytes) then ``items``
                                            (``max_repeat`` values as above); the items past
                                            ``count`` are zero
message                                     ``present`` (1 byte) then its own fields, as here;
                                            all zero when not present
==========================================  ================================================

Field numbers are placed in pre-order: a message field's entry is followed by its own fields'
entries (``Field.end`` is the index after its last descendant).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

__all__ = ["Field", "Table", "WIRE_VARINT", "WIRE_I64", "WIRE_LEN", "WIRE_I32",
           "TYPE_NAMES", "SCALAR_SIZE", "MAX_DEPTH", "MAX_MESSAGE", "MAX_FIELD_NUMBER"]

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5

# google.protobuf.descriptor.FieldDescriptor.TYPE_* (10, group, is not supported).
TYPE_NAMES = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32",
    8: "bool", 9: "string", 11: "message", 12: "bytes", 13: "uint32", 14: "enum",
    15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64",
}
TYPE_BY_NAME = {name: code for code, name in TYPE_NAMES.items()}

#: Bytes a scalar of each type takes in a record.
SCALAR_SIZE = {1: 8, 2: 4, 3: 8, 4: 8, 5: 4, 6: 8, 7: 4, 8: 1, 13: 4, 14: 4, 15: 4, 16: 8,
               17: 4, 18: 8}
_WIRE = {1: WIRE_I64, 2: WIRE_I32, 3: WIRE_VARINT, 4: WIRE_VARINT, 5: WIRE_VARINT,
         6: WIRE_I64, 7: WIRE_I32, 8: WIRE_VARINT, 9: WIRE_LEN, 11: WIRE_LEN, 12: WIRE_LEN,
         13: WIRE_VARINT, 14: WIRE_VARINT, 15: WIRE_I32, 16: WIRE_I64, 17: WIRE_VARINT,
         18: WIRE_VARINT}

#: Levels of message fields below the top-level message that a table may have.
MAX_DEPTH = 3
#: A message on the wire (the top-level one of a decode request) may be at most this long.
MAX_MESSAGE = (1 << 24) - 1
MAX_FIELD_NUMBER = (1 << 29) - 1


@dataclass(frozen=True)
class Field:
    """One field of the flattened schema.

    ``offset`` is where its value (for a string, its ``len``; for a repeated field, its
    ``count``; for a message, its ``present`` byte) is in the top-level record. ``parent`` is
    the index of the message field it belongs to, -1 for the top-level message; ``depth`` is 0
    for a top-level field. ``end`` is the index after the field's last descendant (``index +
    1`` for any but a message field).
    """

    name: str
    number: int
    type: int
    repeated: bool
    offset: int
    parent: int
    depth: int
    end: int
    type_name: str = ""  # a message or enum field's type, for messages and the schema's hash

    @property
    def kind(self) -> str:
        return TYPE_NAMES[self.type]

    @property
    def is_message(self) -> bool:
        return self.type == 11

    @property
    def is_bytes(self) -> bool:  # string or bytes
        return self.type in (9, 12)

    @property
    def wire_type(self) -> int:
        """The wire type of one value (a repeated scalar's elements, unpacked)."""
        return _WIRE[self.type]

    @property
    def scalar_size(self) -> int:
        return SCALAR_SIZE[self.type]


@dataclass(frozen=True)
class Table:
    """A proto3 message type, flattened for the gateware and the records."""

    message: str  # the top-level message's full name
    fields: tuple[Field, ...]
    max_bytes: int
    max_repeat: int

    def size(self, index: int) -> int:
        """Bytes field ``index`` takes in a record (a message field: with its fields)."""
        f = self.fields[index]
        if f.is_message:
            return 1 + sum(self.size(c) for c in self.children(index))
        if f.is_bytes:
            return 2 + self.max_bytes
        if f.repeated:
            return 2 + self.max_repeat * f.scalar_size
        return f.scalar_size

    def children(self, parent: int) -> list[int]:
        """Indices of the fields of the message at ``parent`` (-1: the top-level message)."""
        return [i for i, f in enumerate(self.fields) if f.parent == parent]

    @property
    def record_size(self) -> int:
        return sum(self.size(i) for i in self.children(-1))

    @property
    def depth(self) -> int:
        """Levels of message fields (0 if the message has none)."""
        return max((f.depth + 1 for f in self.fields if f.is_message), default=0)

    def canonical(self) -> dict:
        return {"message": self.message, "max_bytes": self.max_bytes,
                "max_repeat": self.max_repeat, "fields": [asdict(f) for f in self.fields]}

    @property
    def hash(self) -> str:
        """16 hex digits naming the schema and the limits it is built with."""
        return _digest(self.canonical())

    @property
    def schema_hash(self) -> str:
        """16 hex digits naming the schema alone (its message, fields, numbers, types)."""
        fields = [{k: v for k, v in asdict(f).items() if k != "offset"} for f in self.fields]
        return _digest({"message": self.message, "fields": fields})


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
