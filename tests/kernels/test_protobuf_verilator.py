"""The protobuf kernel under Verilator: the cocotb testbench, and a measurement in the fast
stream harness.

The requests are made here, in the pytest process, and answered by the CPU model
(:class:`offload.kernels.protobuf.ProtobufModel`); the cocotb testbench
(``tests/cocotb_requests.py``) only drives them into the gateware, under idle gaps and
backpressure, and compares the responses with the model's, byte for byte and ``error`` flag.
They go to it in a JSON file named by ``$OFFLOAD_REQUESTS``. Before a request is handed over,
the model's answer is itself checked where there is an answer independent of it: a good
request's response must be what the ``protobuf`` package gives for the messages it was made
from, and a malformed one must be refused at the message or record it was built to be refused
at.

What is sent, for the builtin ``small`` schema (``max_bytes`` 8, ``max_repeat`` 3, so strings
and repeated fields are at their limits often) and ``blob`` (bytes-heavy, ``max_bytes`` 64):

* random good requests of both operations, interleaved: records with garbage in the bytes
  the encoder must ignore (past a string's ``len`` or a repeated field's ``count``, under a
  message that is not present; a bool of 2 to 255); messages with their fields shuffled,
  unknown fields of every wire type, a scalar sent twice (the last wins), a message field
  sent in two parts (merged), repeated scalars unpacked or in several runs, tags and lengths
  padded to up to 5 bytes, values and the messages' length prefixes to up to 10;
* a request of every malformed class the kernel's docstring lists, good messages or records
  before the bad one and more after it, each followed by a good request;
* an unknown opcode, an empty request of each operation, requests ending with an empty beat;
* several hundred random byte mutations (flips, inserts, deletes) of good decode requests:
  the differential test of the malformed-input rules.

The fast stream harness drives only ``data``, ``nbytes`` and ``last``, not the request's
``op`` (it sends 0, encode). :func:`measure` therefore runs the kernel behind
:class:`OpFromFirstByte`, which takes each request's first byte as its opcode; that costs one
cycle a request, which :func:`measure` leaves out of its figures.

Builds go to the shared build cache (``$OFFLOAD_CACHE_DIR`` or ``~/.cache/offload``), one per
schema for cocotb and one per schema for the harness. Tests are skipped, naming the tool,
where Verilator, a C++ toolchain or cocotb is missing.
"""

from __future__ import annotations

import functools
import json
import math
import random

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from google.protobuf.descriptor import FieldDescriptor as FD

from hdl.kernels.protobuf import ProtobufKernel
from hdl.kernels.protobuf_table import MAX_FIELD_NUMBER, MAX_MESSAGE, Table
from hdl.stream import byte_stream
from offload.kernels import protobuf_schema
from offload.kernels.protobuf import ProtobufModel, read_varint
from sim import toolchain
from sim.toolchain import ToolchainError

TESTBENCH = "tests.cocotb_requests"

#: The limits each builtin schema is built with here: (max_bytes, max_repeat).
LIMITS = {"small": (8, 3), "blob": (64, 3)}

OPCODES = {name: n for n, name in enumerate(ProtobufKernel.operations)}

#: cocotb tests in the testbench: the idle/backpressure runs and the mutations.
COCOTB_TESTS = 9

#: Requests of random good messages or records in each idle/backpressure run.
GOOD_PER_RUN = 12
#: Mutated decode requests.
MUTATIONS = 400


@pytest.fixture
def _verilator():
    try:
        toolchain.verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


# -- the wire, by hand ---------------------------------------------------------------------------

def varint(value: int, size: int = 0) -> bytes:
    """The varint of ``value`` (0 to 2**64 - 1), padded with 0x80 bytes to ``size`` bytes
    when that is longer than its shortest form (the kernel takes a value or a message's
    length prefix padded to 10 bytes, a tag or a field's length to 5, as upb does)."""
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value and len(out) >= size:
            break
    for k in range(len(out) - 1):
        out[k] |= 0x80
    return bytes(out)


def tag(number: int, wire: int, size: int = 0) -> bytes:
    return varint(number << 3 | wire, size)


def delimited(body: bytes, size: int = 0) -> bytes:
    return varint(len(body), size) + body


def parse(body: bytes) -> list[tuple[int, int, int | bytes]]:
    """A well-formed message's fields: ``(number, wire type, value)``, the value an int for a
    varint, the raw bytes otherwise."""
    return [(number, wire, value) for number, wire, value, _ in _fields(body)]


def _fields(body: bytes) -> list[tuple[int, int, int | bytes, bytes]]:
    # (number, wire type, value, the field's raw bytes) of each field of ``body``, in order.
    out, p = [], 0
    while p < len(body):
        start = p
        key, p = read_varint(body, p)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, p = read_varint(body, p)
        else:
            size, p = read_varint(body, p) if wire == 2 else (8 if wire == 1 else 4, p)
            value, p = body[p:p + size], p + size
        out.append((number, wire, value, body[start:p]))
    return out


# -- random messages and records -----------------------------------------------------------------

_SIGNED32 = (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32, FD.TYPE_ENUM)
_SIGNED64 = (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64)
_UNSIGNED32 = (FD.TYPE_UINT32, FD.TYPE_FIXED32)
_UNSIGNED64 = (FD.TYPE_UINT64, FD.TYPE_FIXED64)
_CHARS = "aZ0 ~\x00\x7féλ\u0800€\uffff\U00010000\U0001f600\U0010ffff"


def random_text(rng: random.Random, size: int) -> str:
    """A string whose UTF-8 is ``size`` bytes: characters of 1 to 4 bytes, the edges of each
    length among them."""
    text, left = [], size
    while left:
        c = rng.choice(_CHARS)
        n = len(c.encode())
        if n > left:
            c, n = "a", 1
        text.append(c)
        left -= n
    return "".join(text)


def _length(rng: random.Random, limit: int) -> int:
    return rng.choice([0, limit, limit, rng.randint(0, limit), rng.randint(0, limit)])


def random_scalar(fd, rng: random.Random, max_bytes: int):
    t = fd.type
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_STRING:
        return random_text(rng, _length(rng, max_bytes))
    if t == FD.TYPE_BYTES:
        return rng.randbytes(_length(rng, max_bytes))
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        wide = 3e38 if t == FD.TYPE_FLOAT else 1e300
        value = rng.choice([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 1e-45,
                            rng.uniform(-1e6, 1e6), rng.uniform(-wide, wide)])
        return float(np.float32(value)) if t == FD.TYPE_FLOAT else value
    if t == FD.TYPE_ENUM and rng.random() < 0.6:
        return rng.choice(list(fd.enum_type.values_by_number))
    if t in _SIGNED32:
        low, high = -(1 << 31), (1 << 31) - 1
    elif t in _SIGNED64:
        low, high = -(1 << 63), (1 << 63) - 1
    elif t in _UNSIGNED32:
        low, high = 0, (1 << 32) - 1
    else:
        low, high = 0, (1 << 64) - 1
    if rng.random() < 0.3:
        return rng.choice([0, 1, -1 if low else 2, low, high])
    return rng.randint(low, high) >> rng.randint(0, high.bit_length() - 1)


def random_message(schema, rng: random.Random, max_bytes: int, max_repeat: int):
    """A message of ``schema`` with random values, strings and repeated fields at their limits
    often, fields left at their defaults (and message fields absent, or present and empty)
    often."""
    def fill(message) -> None:
        for fd in message.DESCRIPTOR.fields:
            if fd.message_type is not None:
                if rng.random() < 0.75:
                    sub = getattr(message, fd.name)
                    sub.SetInParent()
                    if rng.random() < 0.85:
                        fill(sub)
            elif fd.is_repeated:
                count = rng.choice([0, max_repeat, rng.randint(0, max_repeat)])
                getattr(message, fd.name).extend(
                    random_scalar(fd, rng, max_bytes) for _ in range(count))
            elif rng.random() < 0.75:
                setattr(message, fd.name, random_scalar(fd, rng, max_bytes))

    message = schema.message_class()
    fill(message)
    return message


def garble(table: Table, record: bytearray, rng: random.Random) -> None:
    """Random bytes where the encoder must not look: past a string's ``len``, past a repeated
    field's ``count``, anywhere under a message field that is not present (its fields may
    then have any ``len`` and ``count``, bad UTF-8); a present byte or a true bool of 2 to
    255."""
    def noise(start: int, stop: int) -> None:
        for k in range(start, stop):
            if rng.random() < 0.5:
                record[k] = rng.getrandbits(8)

    fields, mb, mr = table.fields, table.max_bytes, table.max_repeat
    i = 0
    while i < len(fields):
        f, o = fields[i], fields[i].offset
        if f.is_message:
            if not record[o]:
                noise(o + 1, o + table.size(i))
                i = f.end
                continue
            record[o] = rng.choice([1, rng.randint(1, 255)])
        elif f.is_bytes:
            noise(o + 2 + int.from_bytes(record[o:o + 2], "little"), o + 2 + mb)
        elif f.repeated:
            count = int.from_bytes(record[o:o + 2], "little")
            noise(o + 2 + count * f.scalar_size, o + 2 + mr * f.scalar_size)
        elif f.type == FD.TYPE_BOOL and record[o]:
            record[o] = rng.randint(1, 255)
        i += 1


class Reshaper:
    """Writes a well-formed message again in another form with the same meaning to
    ``FromString``: fields shuffled (each field's occurrences kept in order), unknown fields
    of every wire type added, a scalar sent twice (first a decoy, then its value), a message
    field sent in two parts, repeated scalars unpacked or split into runs, values padded to
    10 bytes, and (with ``pad``) tags and lengths padded to up to 5 bytes."""

    def __init__(self, rng: random.Random, max_bytes: int, pad: bool):
        self.rng, self.max_bytes, self.pad = rng, max_bytes, pad

    def size(self) -> int:
        return self.rng.choice([0, 0, 0, 5, self.rng.randint(1, 5)]) if self.pad else 0

    def tag(self, number: int, wire: int) -> bytes:
        return tag(number, wire, self.size())

    def length(self, value: bytes) -> bytes:
        return varint(len(value), self.size()) + value

    def unknown(self, desc) -> bytes:
        rng = self.rng
        while True:
            number = rng.choice([rng.randint(1, 40), rng.randint(1, MAX_FIELD_NUMBER),
                                 MAX_FIELD_NUMBER])
            if number not in desc.fields_by_number:
                break
        wire = rng.choice([0, 1, 2, 5])
        value = {0: varint(rng.getrandbits(rng.randint(0, 64)), rng.choice([0, 10])),
                 1: rng.randbytes(8), 5: rng.randbytes(4),
                 2: self.length(rng.randbytes(rng.randint(0, 3 * self.max_bytes)))}[wire]
        return self.tag(number, wire) + value

    def decoy(self, fd, wire: int) -> bytes:
        rng = self.rng
        if wire == 0:
            return varint(rng.getrandbits(64) >> rng.randint(0, 63))
        if wire in (1, 5):
            return rng.randbytes(8 if wire == 1 else 4)
        if fd.type == FD.TYPE_STRING:
            return self.length(random_text(rng, rng.randint(0, self.max_bytes)).encode())
        return self.length(rng.randbytes(rng.randint(0, self.max_bytes)))

    def split_packed(self, fd, payload: bytes) -> list[bytes]:
        """A packed run's values as a mix of runs and single values."""
        wire = {FD.TYPE_DOUBLE: 1, FD.TYPE_FIXED64: 1, FD.TYPE_SFIXED64: 1, FD.TYPE_FLOAT: 5,
                FD.TYPE_FIXED32: 5, FD.TYPE_SFIXED32: 5}.get(fd.type, 0)
        items, p = [], 0
        while p < len(payload):
            if wire == 0:
                q = p
                while payload[q] & 0x80:
                    q += 1
                items.append(payload[p:q + 1])
                p = q + 1
            else:
                n = 8 if wire == 1 else 4
                items.append(payload[p:p + n])
                p += n
        out, k = [], 0
        while k < len(items):
            take = self.rng.randint(1, len(items) - k)
            if take == 1 and self.rng.random() < 0.6:
                out.append(self.tag(fd.number, wire) + items[k])
            else:
                out.append(self.tag(fd.number, 2) + self.length(b"".join(items[k:k + take])))
            k += take
        return out

    def message(self, body: bytes, desc) -> bytes:
        rng = self.rng
        groups: list[list[bytes]] = []  # one per field: its occurrences, in order
        for number, wire, value in parse(body):
            fd = desc.fields_by_number[number]
            # A varint value may be padded to 10 bytes (upb takes that too).
            raw = varint(value, rng.choice([0, 0, 0, 10])) if wire == 0 else value
            if fd.message_type is not None:
                inner = self.message(raw, fd.message_type)
                parts = [inner]
                if rng.random() < 0.3:  # two parts, merged: each field whole in one of them
                    fields = [b for b in _top_fields(inner)]
                    cut = rng.randint(0, len(fields))
                    parts = [b"".join(fields[:cut]), b"".join(fields[cut:])]
                groups.append([self.tag(number, 2) + self.length(p) for p in parts])
            elif fd.is_repeated and wire == 2 and rng.random() < 0.6:
                groups.append(self.split_packed(fd, raw))
            else:
                encoded = self.length(raw) if wire == 2 else raw
                occurrences = [self.tag(number, wire) + encoded]
                if not fd.is_repeated and rng.random() < 0.25:
                    occurrences.insert(0, self.tag(number, wire) + self.decoy(fd, wire))
                groups.append(occurrences)
        for _ in range(rng.choice([0, 0, 1, 3])):
            groups.append([self.unknown(desc)])
        out = []
        while groups:
            k = rng.randrange(len(groups))
            out.append(groups[k].pop(0))
            if not groups[k]:
                groups.pop(k)
        return b"".join(out)


def _top_fields(body: bytes) -> list[bytes]:
    """A well-formed message's fields as their raw bytes, in order."""
    return [raw for _, _, _, raw in _fields(body)]


# -- the requests, and what the model and the protobuf package answer ---------------------------

class Requests:
    """Requests for one schema and its limits, each with the model's answer.

    Each request is a dict: ``op`` (the opcode), ``data`` (hex), ``tail`` (end with an empty
    beat after the data), ``want`` (hex) and ``error`` (the model's answer), ``what`` (for
    messages).
    """

    def __init__(self, schema_name: str, max_bytes: int, max_repeat: int, seed: int = 1):
        self.name = schema_name
        self.schema = protobuf_schema.load(schema_name)
        self.mb, self.mr = max_bytes, max_repeat
        self.table = self.schema.table(max_bytes, max_repeat)
        self.model = ProtobufModel({"schema": self.schema.hash, "max_bytes": max_bytes,
                                    "max_repeat": max_repeat})
        self.rng = random.Random(seed)
        self.desc = self.schema.descriptor

    # -- answers

    def answer(self, op: str, data: bytes, what: str, *, tail: bool = False) -> dict:
        """The request ``data`` of ``op``, with the model's answer."""
        response = self.model.run(op, data)
        return {"op": OPCODES[op], "data": data.hex(), "tail": tail,
                "want": response.data.hex(), "error": response.error, "what": what}

    def encode_answer(self, messages) -> bytes:
        """The protobuf package's answer to encode: each message, length-delimited."""
        return b"".join(delimited(m.SerializeToString()) for m in messages)

    def records(self, messages) -> bytes:
        """The messages' records (the protobuf package's answer to decode)."""
        return self.schema.to_records(messages, self.mb, self.mr).tobytes()

    def checked(self, op: str, data: bytes, what: str, good: int, bad: bool, messages,
                tail: bool = False) -> dict:
        """The model's answer, checked against the protobuf package: the first ``good`` of
        ``messages`` answered, then the end, with ``error`` if ``bad``."""
        request = self.answer(op, data, what, tail=tail)
        prefix = messages[:good]
        want = self.encode_answer(prefix) if op == "encode" else self.records(prefix)
        assert (bytes.fromhex(request["want"]), request["error"]) == (want, bad), (
            f"the model's answer to {what} ({op} {data.hex()}) is {request['want']} "
            f"error={request['error']}; the protobuf package's is {want.hex()} error={bad}"
        )
        return request

    # -- good requests

    def messages(self, count: int) -> list:
        """``count`` random messages (see :func:`random_message`)."""
        return [random_message(self.schema, self.rng, self.mb, self.mr) for _ in range(count)]

    def good_encode(self, count: int | None = None, tail: bool = False) -> dict:
        msgs = self.messages(self.rng.randint(1, 5) if count is None else count)
        records = bytearray(self.records(msgs))
        size = self.table.record_size
        for k in range(len(msgs)):
            if self.rng.random() < 0.6:
                record = records[k * size:(k + 1) * size]
                garble(self.table, record, self.rng)
                records[k * size:(k + 1) * size] = record
        return self.checked("encode", bytes(records), f"{len(msgs)} good records", len(msgs),
                            False, msgs, tail)

    def wire(self, message, pad: bool | None = None) -> bytes:
        """A message, length-delimited, in its canonical form or reshaped."""
        rng = self.rng
        body = message.SerializeToString()
        if rng.random() < 0.3:
            return delimited(body)
        pad = rng.random() < 0.3 if pad is None else pad
        body = Reshaper(rng, self.mb, pad).message(body, self.desc)
        return delimited(body, rng.choice([0, 0, 10, rng.randint(1, 10)]) if pad else 0)

    def good_decode(self, count: int | None = None, tail: bool = False) -> dict:
        msgs = self.messages(self.rng.randint(1, 5) if count is None else count)
        data = b"".join(self.wire(m) for m in msgs)
        return self.checked("decode", data, f"{len(msgs)} good messages", len(msgs), False,
                            msgs, tail)

    def good(self) -> dict:
        """A good request of either operation."""
        return self.good_decode() if self.rng.random() < 0.5 else self.good_encode()

    # -- malformed requests

    def _field(self, test, parent: int = -1):
        """The first field of the message at ``parent`` that passes ``test``, or None."""
        for i in self.table.children(parent):
            if test(self.table.fields[i]):
                return self.table.fields[i]
        return None

    def bad_bodies(self) -> list[tuple[str, bytes]]:
        """Message bodies of every malformed class of decode, ``(label, body)``, made of this
        schema's fields: it needs a varint, a string and a bytes field at the top level (both
        builtin schemas have them); the classes of repeated, fixed-width and message fields
        are made where it has those."""
        t, mb, mr = self.table, self.mb, self.mr
        scalar = self._field(lambda f: f.wire_type == 0 and not f.repeated)
        string = self._field(lambda f: f.kind == "string")
        blob = self._field(lambda f: f.kind == "bytes")
        fixed = self._field(lambda f: f.wire_type in (1, 5) and not f.repeated)
        repeated = [f for f in t.fields if f.repeated]
        message = self._field(lambda f: f.is_message)
        v = tag(scalar.number, 0)
        one = v + b"\x01"  # a good field, to follow a bad one
        unknown = max(f.number for f in t.fields) + 7
        cases = [
            ("a varint value cut by the message's end", v + b"\x80"),
            ("a tag cut by the message's end", one + b"\x80"),
            ("a length cut by the message's end", tag(string.number, 2) + b"\x85"),
            ("a length past the message's end", tag(string.number, 2) + b"\x05ab"),
            ("an unknown length past the message's end", tag(unknown, 2) + b"\x09abc"),
            ("an unknown i64 past the message's end", tag(unknown, 1) + b"1234567"),
            ("an unknown i32 past the message's end", tag(unknown, 5) + b"123"),
            ("wire type 1 for a varint field", tag(scalar.number, 1) + bytes(8)),
            ("wire type 5 for a varint field", tag(scalar.number, 5) + bytes(4) + one),
            ("wire type 2 for a varint field", tag(scalar.number, 2) + b"\x01\x01"),
            ("wire type 0 for a string", tag(string.number, 0) + b"\x01"),
            ("wire type 5 for bytes", tag(blob.number, 5) + bytes(4)),
            ("field number 0, varint", b"\x00\x01"),
            ("field number 0, length", one + b"\x02\x00"),
            ("field number 2**29 (a tag of 2**32)", tag(MAX_FIELD_NUMBER + 1, 0) + b"\x01"),
            ("a tag of 2**35", varint(1 << 35) + b"\x01"),
            ("group start of a field", tag(scalar.number, 3)),
            ("group end of a field", one + tag(scalar.number, 4)),
            ("group start of an unknown field", tag(unknown, 3) + tag(unknown, 4)),
            ("wire type 6", tag(scalar.number, 6) + b"\x00"),
            ("wire type 7 of an unknown field", tag(unknown, 7) + b"\x00"),
            ("a value varint of 11 bytes", v + b"\x80" * 10 + b"\x00"),
            ("a tag of 6 bytes", tag(scalar.number, 0, 6) + b"\x01"),
            ("a tag of 6 bytes after a good one of 5", tag(scalar.number, 0, 5) + b"\x01"
             + tag(scalar.number, 0, 6) + b"\x01"),
            ("an unknown field's tag of 6 bytes", tag(unknown, 0, 6) + b"\x01"),
            ("a string's length of 6 bytes", tag(string.number, 2) + varint(1, 6) + b"a"),
            ("an unknown field's length of 6 bytes", tag(unknown, 2) + varint(0, 6)),
            ("a tag of 11 bytes", b"\x88" + b"\x80" * 9 + b"\x00\x01"),
            ("a length of 11 bytes", tag(string.number, 2) + b"\x80" * 10 + b"\x00"),
            ("an unknown varint of 11 bytes", tag(unknown, 0) + b"\xff" * 10 + b"\x00"),
            ("a value's 10th byte 0x02", v + b"\xff" * 9 + b"\x02"),
            ("a value's 10th byte 0x7f", v + b"\x80" * 9 + b"\x7f"),
            ("a tag's 10th byte 0x02", b"\x88" + b"\x80" * 8 + b"\x02\x01"),
            ("a value of 10 bytes, then a bad tag", v + varint(1, 10) + b"\x00\x01"),
            (f"a string of {mb + 1} bytes", tag(string.number, 2) + delimited(b"a" * (mb + 1))),
            (f"bytes of {mb + 1} bytes", tag(blob.number, 2) + delimited(bytes(mb + 1))),
            ("bytes of 65535 bytes", tag(blob.number, 2) + varint(65535) + bytes(3)),
        ]
        for label, text in [("a bad continuation", b"\xc3\x28"), ("a surrogate", b"\xed\xa0\x80"),
                            ("an overlong 2-byte form", b"\xc0\xaf"),
                            ("an overlong 3-byte form", b"\xe0\x80\xaf"),
                            ("an overlong 4-byte form", b"\xf0\x8f\xbf\xbf"),
                            ("a code point over U+10FFFF", b"\xf4\x90\x80\x80"),
                            ("a sequence cut short", b"a\xe2\x82"),
                            ("a lone continuation byte", b"\x80"), ("a 0xff byte", b"\xff"),
                            ("a 5-byte form", b"\xf8\x88\x80\x80\x80")]:
            if len(text) <= mb:
                cases.append((f"a string with {label}",
                              tag(string.number, 2) + delimited(text) + one))
        if fixed is not None:
            n = 8 if fixed.wire_type == 1 else 4
            cases += [("a fixed value cut by the message's end",
                       tag(fixed.number, fixed.wire_type) + bytes(n - 1)),
                      ("wire type 0 for a fixed field", tag(fixed.number, 0) + b"\x01")]
        for f in repeated:
            path = self._path(f)
            own = f.wire_type
            value = b"\x01" if own == 0 else bytes(8 if own == 1 else 4)
            inner = [
                (f"{mr + 1} values of {f.name}, packed",
                 tag(f.number, 2) + delimited(value * (mr + 1))),
                (f"{mr + 1} values of {f.name}, unpacked", (tag(f.number, own) + value) * (mr + 1)),
                (f"{mr + 1} values of {f.name}, a run then single values",
                 tag(f.number, 2) + delimited(value * 2) + (tag(f.number, own) + value) * (mr - 1)),
                (f"a packed run of {f.name} ending inside a value",
                 tag(f.number, 2) + delimited(value + (b"\x80" if own == 0 else value[:-1]))
                 + tag(f.number, own) + value),
                (f"a packed run of {f.name} past the message's end",
                 tag(f.number, 2) + b"\x05" + value),
                (f"a packed run of {f.name} with a length of 6 bytes",
                 tag(f.number, 2) + varint(len(value), 6) + value),
                (f"wire type {1 if own != 1 else 5} for {f.name}",
                 tag(f.number, 1 if own != 1 else 5) + bytes(8 if own != 1 else 4)),
            ]
            cases += [(label, path(body)) for label, body in inner]
        if message is not None:
            host = self._field(lambda f: f.is_bytes, t.fields.index(message))
            m = tag(message.number, 2)
            cases += [
                ("a message field's length past the message's end", m + b"\x10" + one),
                ("a message field's length of 6 bytes", m + varint(0, 6) + one),
                ("a tag of 6 bytes in the inner message", m + delimited(tag(1, 0, 6) + b"\x01")),
                ("wire type 0 for a message field", tag(message.number, 0) + b"\x01"),
                ("an inner field past the inner message's end, inside the outer one",
                 m + delimited(tag(1, 0) + b"\x80") + one),
                ("a length past the inner message's end, inside the outer one",
                 m + delimited(tag(host.number, 2) + b"\x05ab") + one + one + one),
                ("field number 0 in the inner message", m + delimited(b"\x00\x01")),
                ("wire type 7 in the inner message", m + delimited(tag(9, 7))),
                (f"a string of {mb + 1} bytes in the inner message",
                 m + delimited(tag(host.number, 2) + delimited(b"b" * (mb + 1)))),
                ("a bad inner message in the second part of a merged one",
                 m + delimited(tag(host.number, 2) + b"\x01a") + m + delimited(tag(1, 3))),
            ]
        return cases

    def _path(self, f):
        """Wraps a body of ``f``'s own message into the messages it is inside."""
        def wrap(body: bytes) -> bytes:
            parent = f.parent
            while parent >= 0:
                body = tag(self.table.fields[parent].number, 2) + delimited(body)
                parent = self.table.fields[parent].parent
            return body
        return wrap

    def bad_decode(self) -> list[list[dict]]:
        """A request for each malformed class of decode (good messages, the bad one, more),
        each followed by a good request."""
        rng, out = self.rng, []
        cases = [(label, delimited(body)) for label, body in self.bad_bodies()]
        cases += [
            ("the request ending inside a length prefix", b"\x85"),
            ("the request ending inside a 10-byte length prefix", b"\x85" + b"\x80" * 8),
            ("the request ending inside a message", b"\x0a" + tag(1, 0) + b"\x01"),
            ("the request ending inside a message's field", b"\x05" + tag(1, 0) + b"\x81"),
            (f"a length prefix of {MAX_MESSAGE + 1}", varint(MAX_MESSAGE + 1) + b"\x08\x01"),
            (f"a length prefix of {MAX_MESSAGE}, cut short", varint(MAX_MESSAGE) + b"\x08\x01"),
            ("a length prefix of 2**40", varint(1 << 40) + b"\x08\x01"),
            ("a length prefix of 11 bytes", b"\x80" * 10 + b"\x00"),
            ("a length prefix whose 10th byte is 0x02", b"\x80" * 9 + b"\x02"),
        ]
        for label, bad in cases:
            before = self.messages(rng.choice([0, 0, 1, 2]))
            after = self.messages(rng.choice([0, 1]))
            data = b"".join(self.wire(m) for m in before) + bad
            cut = "request ending" in label or "cut short" in label
            if not cut:
                data += b"".join(self.wire(m) for m in after)
            out.append([self.checked("decode", data, f"decode: {label}", len(before), True,
                                     before), self.good_decode(self.rng.randint(1, 2))])
        return out

    def bad_encode(self) -> list[list[dict]]:
        """A request for each malformed class of encode, each followed by a good request; and
        the same problems under a message that is not present, which must not be checked."""
        t, mb, mr, rng = self.table, self.mb, self.mr, self.rng
        size = t.record_size
        out = []

        def record(edit) -> bytes:
            r = bytearray(self.records(self.messages(1)))
            edit(r)
            return bytes(r)

        def put(r: bytearray, offset: int, value: int) -> None:
            r[offset:offset + 2] = value.to_bytes(2, "little")

        def present(r: bytearray, f) -> None:
            parent = f.parent
            while parent >= 0:
                r[t.fields[parent].offset] = 1
                parent = t.fields[parent].parent

        def absent(r: bytearray, f) -> None:
            # The outermost message f is in: not present, all zero, then f's fields set.
            top = f
            while top.parent >= 0:
                top = t.fields[top.parent]
            r[top.offset:top.offset + t.size(t.fields.index(top))] = \
                bytes(t.size(t.fields.index(top)))

        cases, ignored = [], []
        for f in t.fields:
            o = f.offset
            if f.is_bytes:
                def too_long(r, f=f, o=o, n=mb + 1):
                    present(r, f)
                    put(r, o, n)
                cases.append((f"{f.name} len {mb + 1}", too_long, f))
                cases.append((f"{f.name} len 65535",
                              lambda r, f=f, o=o: (present(r, f), put(r, o, 65535)), f))
            if f.kind == "string":
                for text in (b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
                             b"a\xe2\x82", b"\xff"):
                    if len(text) > mb:
                        continue

                    def bad_utf8(r, f=f, o=o, text=text):
                        present(r, f)
                        put(r, o, len(text))
                        r[o + 2:o + 2 + mb] = (text + bytes(mb))[:mb]
                    cases.append((f"{f.name} of bad UTF-8 {text.hex()}", bad_utf8, f))
            if f.repeated:
                def too_many(r, f=f, o=o, n=mr + 1):
                    present(r, f)
                    put(r, o, n)
                cases.append((f"{f.name} count {mr + 1}", too_many, f))
                cases.append((f"{f.name} count 65535",
                              lambda r, f=f, o=o: (present(r, f), put(r, o, 65535)), f))
        for label, edit, f in cases:
            before = self.messages(rng.choice([0, 1, 2]))
            data = self.records(before) + record(edit) + self.records(self.messages(1))
            out.append([self.checked("encode", data, f"encode: {label}", len(before), True,
                                     before), self.good_encode(self.rng.randint(1, 2))])
            if f.parent >= 0:
                ignored.append((label, edit, f))
        # The same problems under a message that is not present: not encoded, so not checked.
        for label, edit, f in ignored:
            msg = self.messages(1)[0]
            r = bytearray(self.records([msg]))
            edit(r)
            absent(r, f)
            top = f
            while top.parent >= 0:
                top = t.fields[top.parent]
            msg.ClearField(top.name)
            out.append([self.checked("encode", bytes(r), f"encode: {label} (not present)", 1,
                                     False, [msg])])
        for cut in sorted({1, size - 1, rng.randint(1, size - 1)}):
            before = self.messages(rng.choice([0, 1, 2]))
            data = self.records(before) + self.records(self.messages(1))[:cut]
            out.append([self.checked("encode", data,
                                     f"encode: a partial record of {cut} bytes", len(before),
                                     True, before), self.good_encode(self.rng.randint(1, 2))])
        return out

    def odd_values(self) -> list[list[dict]]:
        """Good decode requests whose values are in forms the model takes from upb: a bool of
        2 or 2**63, an int32 in 5 or 10 bytes, values wider than their field."""
        out = []
        for f in self.table.fields:
            if f.repeated or f.wire_type != 0 or f.parent != -1:
                continue
            for value in (2, 1 << 31, (1 << 32) + 5, 1 << 63, (1 << 64) - 1):
                body = tag(f.number, 0) + varint(value)
                request = self.answer("decode", delimited(body),
                                      f"decode: {f.name} = varint {value}")
                assert not request["error"], request
                out.append([request])
        return out

    # -- everything else

    def specials(self) -> list[list[dict]]:
        """Unknown opcodes (each followed by a good request), empty requests, and requests
        ended by an empty beat."""
        out = []
        for opcode in (2, 5, 255):
            data = self.rng.randbytes(self.rng.choice([0, 3]))
            out.append([{"op": opcode, "data": data.hex(), "tail": False, "want": "",
                         "error": True, "what": f"opcode {opcode}"}, self.good()])
        for op in ("encode", "decode"):
            out.append([self.checked(op, b"", f"an empty {op} request", 0, False, []),
                        self.good()])
            out.append([self.checked(op, b"", f"an empty {op} request, ended by an empty "
                                     "beat", 0, False, [], tail=True)])
        for count in (None, 1):
            out.append([self.good_encode(count, tail=True)])
            out.append([self.good_decode(count, tail=True)])
        return out

    def mutations(self, count: int) -> list[dict]:
        """Good decode requests with random bytes flipped, inserted and deleted."""
        rng, out = self.rng, []
        while len(out) < count:
            n = len(out)
            data = bytearray(b"".join(self.wire(m) for m in self.messages(rng.randint(1, 2))))
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                kind = rng.random()
                at = rng.randrange(len(data) + 1)
                byte = rng.choice([rng.getrandbits(8), 0x00, 0x80, 0xFF, 0x01])
                if kind < 0.4 and at < len(data):
                    data[at] ^= 1 << rng.randrange(8)
                elif kind < 0.6 and at < len(data):
                    data[at] = byte
                elif kind < 0.8:
                    data.insert(at, byte)
                elif at < len(data):
                    del data[at]
            out.append(self.answer("decode", bytes(data), f"mutation {n}"))
        return out

    def signalling_nans(self) -> list[list[dict]]:
        """A float's signalling NaN, decoded and encoded: kept bit for bit, by the kernel and
        by the model (Python reads a float as a double, which would set its quiet bit)."""
        out = []
        floats = [f for f in self.table.fields if f.type == FD.TYPE_FLOAT and not f.repeated
                  and f.parent == -1]
        for f in floats:
            for bits in (b"\x01\x00\x80\x7f", b"\xff\xff\xbf\xff"):
                record = bytearray(self.table.record_size)
                record[f.offset:f.offset + 4] = bits
                message = tag(f.number, 5) + bits
                for op, data, want in (("decode", delimited(message), record),
                                       ("encode", bytes(record), delimited(message))):
                    what = f"{op}: {f.name}, a signalling NaN {bits.hex()}"
                    request = self.answer(op, data, what)
                    assert (request["want"], request["error"]) == (want.hex(), False), what
                    out.append([request])
        return out


def request_file(schema_name: str, path: str, width: int = 1) -> str:
    """Writes the testbench's requests for ``schema_name`` to ``path`` (JSON); returns it.

    ``runs`` has a list of requests for each idle/backpressure run of the testbench, each with
    random good ones and a share of the malformed ones and the specials; ``mutations`` has the
    mutated decode requests.
    """
    mb, mr = LIMITS[schema_name]
    made = Requests(schema_name, mb, mr, seed=sum(schema_name.encode()))
    fixed = (made.bad_decode() + made.bad_encode() + made.odd_values() + made.specials()
             + made.signalling_nans())
    runs: list[list[dict]] = [[] for _ in range(COCOTB_TESTS - 1)]
    # Each malformed request, with the good one after it, in one of the runs.
    made.rng.shuffle(fixed)
    for k, group in enumerate(fixed):
        runs[k % len(runs)].append(group)
    for run in runs:
        run.extend([made.good()] for _ in range(GOOD_PER_RUN))
        made.rng.shuffle(run)
    runs = [[request for group in run for request in group] for run in runs]
    document = {"schema": schema_name, "max_bytes": mb, "max_repeat": mr, "width": width,
                "runs": runs, "mutations": made.mutations(MUTATIONS)}
    with open(path, "w") as f:
        json.dump(document, f)
    return path


def kernel(schema_name: str, width: int = 1) -> ProtobufKernel:
    """The kernel for a builtin schema, built with its :data:`LIMITS`, ``width`` bytes a beat."""
    mb, mr = LIMITS[schema_name]
    return ProtobufKernel(protobuf_schema.load(schema_name).table(mb, mr), width)


# -- the cocotb testbench ------------------------------------------------------------------------

@pytest.mark.usefixtures("_verilator")
@pytest.mark.parametrize("width", ProtobufKernel.widths)
@pytest.mark.parametrize("schema_name", sorted(LIMITS))
def test_cocotb(schema_name, width, tmp_path):
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    from sim.cocotb_runner import run_cocotb

    path = request_file(schema_name, str(tmp_path / "requests.json"), width)
    with open(path) as f:
        document = json.load(f)
    requests = sum(len(run) for run in document["runs"]) + len(document["mutations"])
    refused = sum(r["error"] for r in document["mutations"])
    result = run_cocotb(
        functools.partial(kernel, schema_name, width), f"protobuf_{schema_name}_w{width}",
        TESTBENCH,
        tmp_path, parameters={"requests": path}, timeout_s=300,
    )
    assert result.tests == COCOTB_TESTS and result.skipped == 0
    print(f"cocotb {schema_name} width {width}: {requests} requests answered as the model does "
          f"({refused} of {len(document['mutations'])} mutations refused); "
          f"{result.cycles_per_second(10):,.0f} cycles/s (wall clock)")


# -- the measurement -----------------------------------------------------------------------------

class OpFromFirstByte(wiring.Component):
    """The kernel behind a plain byte stream whose requests start with their opcode.

    The fast stream harness drives a byte stream's fields only, so ``op`` would always be 0;
    this takes each request's first beat as its ``op`` (its first byte; the rest of the beat is
    padding; a request of that beat alone is the empty request) and hands the rest to the
    kernel, so that one build measures both operations. Taking the opcode beat costs a cycle a
    request.
    """

    def __init__(self, table: Table, width: int = 1):
        self.kernel = ProtobufKernel(table, width)
        super().__init__({"i_stream": In(byte_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.kernel = k = self.kernel
        i = self.i_stream
        first = Signal(init=1)
        op = Signal(8)
        m.d.comb += [
            k.i_stream.payload.data.eq(i.payload.data),
            k.i_stream.payload.nbytes.eq(Mux(first, 0, i.payload.nbytes)),
            k.i_stream.payload.last.eq(i.payload.last),
            k.i_stream.payload.op.eq(Mux(first, i.payload.data[:8], op)),
        ]
        with m.If(first & ~i.payload.last):  # the opcode: taken, not passed on
            m.d.comb += i.ready.eq(1)
            with m.If(i.valid):
                m.d.sync += [op.eq(i.payload.data[:8]), first.eq(0)]
        with m.Else():
            m.d.comb += [k.i_stream.valid.eq(i.valid), i.ready.eq(k.i_stream.ready)]
            with m.If(i.valid & i.ready & i.payload.last):
                m.d.sync += first.eq(1)
        wiring.connect(m, wiring.flipped(self.o_stream), k.o_stream)
        return m


@functools.cache
def harness(schema_name: str, max_bytes: int, max_repeat: int, width: int = 1):
    from sim.harness import StreamHarness

    table = protobuf_schema.load(schema_name).table(max_bytes, max_repeat)
    return StreamHarness.for_component(
        functools.partial(OpFromFirstByte, table, width),
        f"protobuf_opbyte_{table.hash}_w{width}", width,
    )


def measure(schema_name: str, op: str, *, messages: int = 256, per_request: int = 16,
            max_bytes: int | None = None, max_repeat: int | None = None,
            seed: int = 0, width: int = 1) -> dict:
    """Cycles the kernel takes for ``op`` ("encode" or "decode") of random messages of the
    schema ``schema_name``, in the fast stream harness (input always valid, output always
    ready).

    ``messages`` random messages (strings and repeated fields at their limits often; see
    :func:`random_message`) go in requests of ``per_request``; the limits default to
    :data:`LIMITS`. Every response is compared with the model's; the figures leave out the
    cycle a request that :class:`OpFromFirstByte` takes for its opcode.

    Returns a dict: ``schema``, ``op``, ``max_bytes``, ``max_repeat``, ``messages``,
    ``requests``, ``wire_bytes`` (the messages, length-delimited: what decode takes and encode
    answers), ``record_bytes``, ``cycles`` (from the first beat taken to the last response
    beat), ``cycles_per_message``, ``cycles_per_wire_byte``, ``input_stalls``, ``wrong`` (the
    indices of requests not answered as the model does; empty when all were right), and
    ``sim_cycles_per_cpu_second``.
    """
    mb, mr = LIMITS.get(schema_name, (32, 8))
    mb, mr = max_bytes or mb, max_repeat or mr
    made = Requests(schema_name, mb, mr, seed=seed)
    msgs = made.messages(messages)
    batches = [msgs[k:k + per_request] for k in range(0, len(msgs), per_request)]
    wire = [made.encode_answer(batch) for batch in batches]
    data = [made.records(batch) for batch in batches] if op == "encode" else wire
    opcode = bytes([OPCODES[op]]).ljust(width, b"\0")  # a beat of its own
    result = harness(schema_name, mb, mr, width).run([opcode + d for d in data])
    wrong = [n for n, (d, out, error) in enumerate(zip(data, result.outputs, result.errors,
                                                       strict=True))
             if (out, error) != (made.model.run(op, d).data, False)]
    cycles = result.active_cycles - len(batches)  # less the opcode bytes' cycles
    wire_bytes = sum(map(len, wire))
    return {
        "schema": schema_name, "op": op, "max_bytes": mb, "max_repeat": mr, "width": width,
        "messages": len(msgs), "requests": len(batches), "wire_bytes": wire_bytes,
        "record_bytes": len(msgs) * made.table.record_size, "cycles": cycles,
        "cycles_per_message": cycles / len(msgs),
        "cycles_per_wire_byte": cycles / wire_bytes,
        "input_stalls": result.input_stalls, "wrong": wrong,
        "sim_cycles_per_cpu_second":
            result.cycles / result.cpu_seconds if result.cpu_seconds > 0 else math.inf,
    }


@pytest.mark.usefixtures("_verilator")
@pytest.mark.parametrize("width", ProtobufKernel.widths)
@pytest.mark.parametrize("schema_name", sorted(LIMITS))
def test_harness_measure(schema_name, width):
    """Both operations in the fast harness: every response right; the figures printed."""
    for op in ("encode", "decode"):
        figures = measure(schema_name, op, width=width)
        assert figures["wrong"] == [], f"{schema_name} {op}: requests {figures['wrong']} wrong"
        print(f"harness {schema_name} {op} width {width}: "
              f"{figures['cycles_per_message']:.1f} cycles/message, "
              f"{figures['cycles_per_wire_byte']:.2f} cycles/wire byte "
              f"({figures['messages']} messages, {figures['wire_bytes']} wire bytes, "
              f"{figures['record_bytes']} record bytes, {figures['cycles']} cycles; "
              f"{figures['sim_cycles_per_cpu_second'] / 1e6:.2f} M cycles per CPU second)")


def test_wire_helpers():
    """The hand-written wire helpers the requests are built with: padded varints as the
    kernel's docstring allows them, and parse() inverting upb's output."""
    assert varint(0) == b"\x00" and varint(300) == b"\xac\x02"
    assert varint(1, 10) == b"\x81" + b"\x80" * 8 + b"\x00"
    assert varint((1 << 64) - 1) == b"\xff" * 9 + b"\x01"
    assert len(varint((1 << 64) - 1, 10)) == 10
    schema = protobuf_schema.load("small")
    msg = random_message(schema, random.Random(3), 8, 3)
    body = msg.SerializeToString()
    assert b"".join(_top_fields(body)) == body
    # A reshaped message means the same to upb.
    for seed in range(40):
        again = Reshaper(random.Random(seed), 8, pad=seed % 2).message(body, schema.descriptor)
        parsed = schema.message_class.FromString(again)
        parsed.DiscardUnknownFields()
        assert parsed == msg, again.hex()
