"""Protobuf: messages of one proto3 schema encoded from records and decoded into them.

The kernel is built for one message type (its ``schema`` parameter, see
:mod:`offload.kernels.protobuf_schema`) and two limits, ``max_bytes`` (the longest string or
bytes value) and ``max_repeat`` (the most values of a repeated field). The type is flattened
into a field table (:mod:`hdl.kernels.protobuf_table`), and every message has a *record* of
``record_size`` bytes laid out from it; the gateware (:mod:`hdl.kernels.protobuf`) and this
module's CPU path work from the same table. Calls::

    dev = offload.open(..., params={"protobuf": {"schema": "small"}})
    data = dev.protobuf.encode([msg1, msg2])       # -> [bytes, bytes]: SerializeToString()
    data = dev.protobuf.encode(records)            # a numpy array of the schema's dtype
    recs = dev.protobuf.decode([b1, b2])           # -> a numpy array of records
    msgs = dev.protobuf.decode(b1, messages=True)  # -> [message]

``encode`` answers, for each record, exactly what the ``protobuf`` package's
``SerializeToString()`` gives for the same values; ``decode`` answers the records of what
``FromString()`` gives, for every message the kernel takes. What it refuses (a
:class:`~offload.KernelError` naming the message, the byte and the field) is listed in
:mod:`hdl.kernels.protobuf`; :func:`scan_decode` and :func:`scan_encode` are those rules,
walked in Python, independently of the protobuf package.

Where the rules and the protobuf package (upb) differ, the kernel is the stricter: it refuses
what upb would take (a varint whose 10th byte is above 0x01, whose bits past 64 upb drops; a
field of the schema sent with another wire type, which upb keeps as an unknown field; groups,
which upb skips; values over the built limits), and it takes nothing upb refuses (a tag or a
field's length over 5 bytes is refused, as upb does). So the CPU path hands upb each good
message as it came.

Framing. A call's records (encode) or messages (decode) are sent in batches, a request
message each, so small that the answer to a whole batch fits one response frame of the link
(:data:`~hdl.link.protocol.MAX_RESPONSE` bytes); a record or message whose own answer is
longer than that goes alone. However the link cuts a batch into frames, no frame's response
can overflow; and the kernel answers a lone record or message only after its last byte, in
the message's last frame and its continuations. That holds whatever the schema and the
limits, so the operations declare no streaming expansion (see :func:`batch_size` for why a
stream does not work here).
"""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hdl.kernels.protobuf_table import MAX_FIELD_NUMBER, MAX_MESSAGE, Table
from hdl.link.protocol import MAX_RESPONSE

from . import KernelSpec, Operation, Param, Response
from ._bytes import as_bytes
from .protobuf_schema import Schema, convert_param, lookup

__all__ = ["SPEC", "ProtobufModel", "scan_decode", "scan_encode", "encoded_bound",
           "batch_size", "gateware", "varint", "read_varint"]

_WIRE_NAMES = {0: "varint", 1: "i64", 2: "len", 3: "a group start", 4: "a group end",
               5: "i32", 6: "none", 7: "none"}
_U64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """The varint of a non-negative integer (at most 64 bits), in its shortest form."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- the table, as the walkers use it ------------------------------------------------------------

class _Layout:
    """What the walkers look up in a table: fields by number per message, dotted names."""

    def __init__(self, table: Table):
        self.table = table
        self.by_number: dict[int, dict[int, int]] = {-1: {}}
        self.path: list[str] = []
        for i, f in enumerate(table.fields):
            self.by_number.setdefault(i, {})
            self.by_number.setdefault(f.parent, {})[f.number] = i
            self.path.append(f.name if f.parent < 0 else f"{self.path[f.parent]}.{f.name}")


@functools.lru_cache(maxsize=64)
def _layout(table: Table) -> _Layout:
    return _Layout(table)


class _Bad(Exception):
    """A malformed message or record: where (a byte of the request) and what was wrong."""

    def __init__(self, at: int, text: str):
        super().__init__(at, text)
        self.at, self.text = at, text


class _Cut(Exception):
    """The request ends inside the message being walked."""


# -- decode: the rules, walked -------------------------------------------------------------------

class _DecodeWalker:
    """Walks one decode request as :mod:`hdl.kernels.protobuf` says the gateware does.

    The bodies of the good messages (``bodies``) are what the CPU path hands upb.
    """

    def __init__(self, table: Table, data: bytes):
        self.layout = _layout(table)
        self.fields = table.fields
        self.max_bytes, self.max_repeat = table.max_bytes, table.max_repeat
        self.data, self.n = data, len(data)
        self.counts: dict[int, int] = {}

    def name(self, index: int | None, number: int) -> str:
        return f"unknown field {number}" if index is None else \
            f"field {self.layout.path[index]!r}"

    def varint(self, p: int, lim: int, what: str, at: int, past: str,
               longest: int = 10) -> tuple[int, int]:
        """The varint at ``p``, ``what`` it is; running into ``lim`` is ``past``, at ``at``.

        A varint over 10 bytes, or whose 10th byte is above 0x01, is bad at its first byte;
        so is a tag or a field's length over ``longest`` = 5 bytes (as upb has it).
        """
        data, n, start = self.data, self.n, p
        value = shift = 0
        while True:
            if p >= lim:
                raise _Bad(at, past)
            if p >= n:
                raise _Cut
            b = data[p]
            p += 1
            if longest < 10 and p - start == longest and b & 0x80:
                raise _Bad(start, f"{what} is a varint longer than {longest} bytes")
            if p - start == 10 and b > 0x01:
                raise _Bad(start, f"{what} is a varint longer than 10 bytes" if b & 0x80 else
                           f"{what} is a varint whose 10th byte is above 0x01")
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, p

    def span(self, p: int, size: int, lim: int, at: int, past: str) -> int:
        """``size`` bytes at ``p`` that must end by ``lim``: where they end."""
        if p + size > lim:
            raise _Bad(at, past)
        if p + size > self.n:
            raise _Cut
        return p + size

    def message(self, p: int, lim: int, parent: int) -> None:
        """Walk the fields of the message at ``parent`` (-1: the top level) up to ``lim``."""
        children = self.layout.by_number[parent]
        data = self.data
        past = "a field runs past the end of the message it is in"
        while p < lim:
            at = p
            tag, p = self.varint(p, lim, "a tag", at, past, longest=5)
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise _Bad(at, "a tag has field number 0")
            if number > MAX_FIELD_NUMBER:
                raise _Bad(at, f"a tag has field number {number}, over the maximum of "
                               f"{MAX_FIELD_NUMBER}")
            index = children.get(number)
            name = self.name(index, number)
            if wire in (3, 4):
                raise _Bad(at, f"{name} came with wire type {wire} ({_WIRE_NAMES[wire]}); "
                               f"the kernel takes no groups")
            if wire in (6, 7):
                raise _Bad(at, f"{name} came with wire type {wire}, which does not exist")
            past = f"{name} runs past the end of the message it is in"
            if index is None:  # skipped, and left out of the body for upb
                if wire == 0:
                    _, p = self.varint(p, lim, f"the value of {name}", at, past)
                elif wire == 2:
                    size, p = self.varint(p, lim, f"the length of {name}", at, past,
                                      longest=5)
                    p = self.span(p, size, lim, at, past)
                else:
                    p = self.span(p, 8 if wire == 1 else 4, lim, at, past)
                continue
            f = self.fields[index]
            own = f.wire_type
            if wire == own and own != 2:  # a scalar, one value
                if wire == 0:
                    _, p = self.varint(p, lim, f"the value of {name}", at, past)
                else:
                    p = self.span(p, 8 if wire == 1 else 4, lim, at, past)
                if f.repeated:
                    self.count(index, at, name, 1)
            elif wire == 2 and f.repeated:  # a packed run
                size, p = self.varint(p, lim, f"the length of {name}", at, past,
                                      longest=5)
                if p + size > lim:
                    raise _Bad(at, past)
                end = p + size
                inside = f"{name}'s packed run ends inside a value"
                while p < end:
                    if own == 0:
                        _, p = self.varint(p, end, f"a value of {name}", at, inside)
                    else:
                        p = self.span(p, 8 if own == 1 else 4, end, at, inside)
                    self.count(index, at, name, 1)
            elif wire == 2 and f.is_bytes:
                size, p = self.varint(p, lim, f"the length of {name}", at, past,
                                      longest=5)
                if p + size > lim:
                    raise _Bad(at, past)
                if size > self.max_bytes:
                    raise _Bad(at, f"{name} is {size} bytes, over the built maximum of "
                                   f"{self.max_bytes}")
                start, p = p, self.span(p, size, lim, at, past)
                if f.kind == "string":
                    try:
                        data[start:p].decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise _Bad(at, f"{name} is not valid UTF-8 ({e.reason} at its byte "
                                       f"{e.start})") from None
            elif wire == 2 and f.is_message:
                size, p = self.varint(p, lim, f"the length of {name}", at, past,
                                      longest=5)
                if p + size > lim:
                    raise _Bad(at, past)
                self.message(p, p + size, index)
                p += size
            else:
                kind = f.kind if not f.repeated else f"repeated {f.kind}"
                takes = f"wire type {own}" if not f.repeated or own == 2 else \
                    f"wire type {own} or 2 (packed)"
                raise _Bad(at, f"{name} is {kind} ({takes}) but came with wire type {wire}")

    def count(self, index: int, at: int, name: str, more: int) -> None:
        n = self.counts.get(index, 0) + more
        if n > self.max_repeat:
            raise _Bad(at, f"{name} has more than {self.max_repeat} values, the built "
                           f"maximum")
        self.counts[index] = n

    def walk(self, bodies: list[bytes] | None) -> tuple[int, str | None]:
        n = self.n
        pos = index = 0
        while pos < n:
            start = pos
            size = None
            try:
                size, p = self.varint(pos, sys.maxsize, "its length prefix", pos, "")
                if size > MAX_MESSAGE:
                    raise _Bad(start, f"it is {size} bytes long, over the maximum of "
                                      f"{MAX_MESSAGE}")
                self.counts = {}
                self.message(p, p + size, -1)
            except _Bad as bad:
                return index, f"message {index} at byte {bad.at}: {bad.text}"
            except _Cut:
                if size is None:
                    what = "the request ends inside its length prefix"
                else:
                    what = (f"it is {size} bytes long, and the request ends after "
                            f"{n - p} of them")
                return index, f"message {index} at byte {start}: cut short: {what}"
            pos = p + size
            if bodies is not None:
                bodies.append(self.data[p:p + size])
            index += 1
        return index, None


def scan_decode(table: Table, data: bytes) -> tuple[int, str | None]:
    """Where a decode request goes wrong, by the rules of :mod:`hdl.kernels.protobuf`.

    ``data`` is length-delimited messages, concatenated. Returns how many messages are good
    before the first bad one (all of them if none is), and for the bad one what was wrong:
    its index, the byte of the request the problem is at (the field's tag; the first byte of
    a varint over 10 bytes or whose 10th byte is above 0x01; for a message cut short or too
    long, its length prefix) and the field, e.g. ``"message 2 at byte 17: field
    'name' is 40 bytes, over the built maximum of 32"``; ``None`` if every message is good.
    """
    return _DecodeWalker(table, as_bytes(data)).walk(None)


def _decode_bodies(table: Table, data: bytes) -> tuple[list[bytes], str | None]:
    """The good messages of a decode request, as upb takes them, and the problem."""
    bodies: list[bytes] = []
    _, problem = _DecodeWalker(table, data).walk(bodies)
    return bodies, problem


# -- encode: the rules, walked -------------------------------------------------------------------

def _check_record(table: Table, record: bytes, at: int, max_bytes: int,
                  max_repeat: int) -> str | None:
    # The first problem of one record (at byte ``at`` of the request), or None.
    fields, layout = table.fields, _layout(table)
    i = 0
    while i < len(fields):
        f = fields[i]
        o = f.offset
        if f.is_message:
            if not record[o]:  # not present: nothing below it is encoded, or checked
                i = f.end
                continue
        elif f.is_bytes:
            size = record[o] | record[o + 1] << 8
            name = f"field {layout.path[i]!r}"
            if size > max_bytes:
                return f"byte {at + o}: {name} has len {size}, over the built maximum of " \
                       f"{max_bytes}"
            if f.kind == "string":
                try:
                    record[o + 2:o + 2 + size].decode("utf-8")
                except UnicodeDecodeError as e:
                    return f"byte {at + o}: {name} is not valid UTF-8 ({e.reason} at its " \
                           f"byte {e.start})"
        elif f.repeated:
            count = record[o] | record[o + 1] << 8
            if count > max_repeat:
                return f"byte {at + o}: field {layout.path[i]!r} has count {count}, over " \
                       f"the built maximum of {max_repeat}"
        i += 1
    return None


def scan_encode(table: Table, request: bytes) -> tuple[int, str | None]:
    """Where an encode request goes wrong, by the rules of :mod:`hdl.kernels.protobuf`.

    ``request`` is records, concatenated. Returns how many records are good before the first
    bad one, and for it what was wrong (``"record 3 at byte 700: field 'name' has len 40, over
    the built maximum of 32"``); only fields all of whose enclosing messages are present are
    checked, as only they are encoded. A request that ends inside a record is bad there.
    """
    request = as_bytes(request)
    size = table.record_size
    whole = len(request) // size if size else 0
    for i in range(whole):
        at = i * size
        problem = _check_record(table, request[at:at + size], at, table.max_bytes,
                                table.max_repeat)
        if problem is not None:
            return i, f"record {i} at {problem}"
    if size == 0:
        return 0, None if not request else f"record 0 at byte 0: the records of {table.message} " \
            f"are empty (it has no fields), and the request has {len(request)} bytes"
    if len(request) % size:
        return whole, (f"record {whole} at byte {whole * size}: the request ends inside it "
                       f"({len(request) % size} of its {size} bytes)")
    return whole, None


# -- limits of the answers -----------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def encoded_bound(table: Table) -> int:
    """The most bytes the kernel answers one record with: its message with every field at
    its longest (negative int32s, full strings and repeated fields, every message present),
    and the message's length prefix; the gateware's output buffer is sized from the same."""
    from hdl.kernels.protobuf import max_encoded, varint_len

    body = max_encoded(table)
    return varint_len(body) + body


def batch_size(answer: int) -> int:
    """Records or messages per request message when each is answered with up to ``answer``
    bytes: as many as one response frame holds, and at least one.

    Why batches, not one stream: what the kernel answers while a frame of a message runs must
    fit that frame's response (else the kernel is held and cannot take the rest of the
    frame). For a stream the link would cut frames of ``(MAX_RESPONSE - holdback) /
    expansion`` request bytes, with an expansion of ``record_size`` per byte for decode (a
    1-byte message is a whole record) and a holdback of a record or two: 3-byte frames for the
    builtin ``small`` schema, none at all once a record or a message is over half a response
    frame. And an Operation declares one expansion for every build, while these figures depend
    on the schema and the limits. A batch whose whole answer fits one frame cannot overfill
    any, however the link cuts it; a lone record or message is answered after its last byte,
    so it needs only continuation frames; so the operations stream nothing (expansion 0).
    """
    return max(1, MAX_RESPONSE // max(1, answer))


# -- the CPU path --------------------------------------------------------------------------------

def read_varint(body: bytes, p: int) -> tuple[int, int]:
    """The varint at ``p`` of well-formed ``body``, and where it ends."""
    value = shift = 0
    while True:
        b = body[p]
        p += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, p


def _float_places(table: Table, body: bytes) -> dict[int, int]:
    """Where each float value of a good message ``body`` is: its record offset to its byte in
    ``body``, the last value of a field sent more than once, each value of a repeated field at
    its place in ``items``.

    Python reads a float field as a double, which sets a signalling NaN's quiet bit; the
    kernel keeps a value's bits as they came, and so does the CPU path, through these places.
    """
    children = _layout(table).by_number
    counts: dict[int, int] = {}
    places: dict[int, int] = {}

    def walk(p: int, lim: int, parent: int) -> None:
        while p < lim:
            tag, p = read_varint(body, p)
            index = children.get(parent, {}).get(tag >> 3)
            wire = tag & 7
            f = table.fields[index] if index is not None else None
            if wire == 0:
                _, p = read_varint(body, p)
                continue
            if wire in (1, 5):
                if f is not None and f.type == 2:
                    place(index, p)
                p += 8 if wire == 1 else 4
                continue
            size, p = read_varint(body, p)
            if f is not None and f.is_message:
                walk(p, p + size, index)
            elif f is not None and f.type == 2 and f.repeated:
                for q in range(p, p + size, 4):
                    place(index, q)
            p += size

    def place(index: int, at: int) -> None:
        f = table.fields[index]
        if f.repeated:
            k = counts.get(index, 0)
            counts[index] = k + 1
            places[f.offset + 2 + 4 * k] = at
        else:
            places[f.offset] = at

    if any(f.type == 2 for f in table.fields):
        walk(0, len(body), -1)
    return places


@functools.lru_cache(maxsize=64)
def _built(schema: str, max_bytes: int, max_repeat: int) -> tuple[Schema, Table, np.dtype]:
    found = lookup(schema)
    return found, found.table(max_bytes, max_repeat), found.dtype(max_bytes, max_repeat)


def _resolve(params: Mapping[str, Any]) -> tuple[Schema, Table, np.dtype]:
    return _built(params["schema"], int(params["max_bytes"]), int(params["max_repeat"]))


class ProtobufModel:
    """The CPU path, answering as the gateware does (see :mod:`hdl.kernels.protobuf`).

    The work is the ``protobuf`` package's (``FromString``/``SerializeToString``); which
    records and messages are good, and so how much of a request is answered, is decided by
    :func:`scan_decode`/:func:`scan_encode`, by the kernel's rules.
    """

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)

    def reset(self) -> None:
        pass

    @property
    def schema(self) -> Schema:
        return _resolve(self.params)[0]

    @property
    def table(self) -> Table:
        return _resolve(self.params)[1]

    def run(self, op: str, request: bytes) -> Response:
        if op not in ("encode", "decode"):  # the gateware's answer to an opcode it lacks
            return Response(b"", error=True)
        if not request:
            return Response(b"")
        schema, table, dtype = _resolve(self.params)
        limits = table.max_bytes, table.max_repeat
        size = table.record_size
        if op == "decode":
            bodies, problem = _decode_bodies(table, bytes(request))
            messages = [schema.message_class.FromString(body) for body in bodies]
            records = bytearray(schema.to_records(messages, *limits).tobytes())
            for n, body in enumerate(bodies):  # floats' bits as they came
                for offset, at in _float_places(table, body).items():
                    records[n * size + offset:n * size + offset + 4] = body[at:at + 4]
            return Response(bytes(records), error=problem is not None)
        good, problem = scan_encode(table, request)
        raw = bytes(request[:good * size])
        records = np.frombuffer(raw, dtype)
        out = bytearray()
        for n, message in enumerate(schema.to_messages(records, *limits)):
            body = bytearray(message.SerializeToString())
            for offset, at in _float_places(table, body).items():  # the record's float bits
                body[at:at + 4] = raw[n * size + offset:n * size + offset + 4]
            out += varint(len(body)) + body
        return Response(bytes(out), error=problem is not None)


def gateware(schema: str, max_bytes: int, max_repeat: int, width: int = 1):
    """The kernel's gateware for a loaded schema (by its hash), limits and width."""
    from hdl.kernels.protobuf import ProtobufKernel

    return ProtobufKernel(lookup(schema).table(max_bytes, max_repeat), width)


# -- the codec -----------------------------------------------------------------------------------

def _records(params, records) -> np.ndarray:
    # A call's records: a numpy array of the schema's dtype, message objects, or one message.
    from google.protobuf.message import Message

    schema, table, dtype = _resolve(params)
    if isinstance(records, np.ndarray):
        if records.dtype != dtype:
            raise TypeError(f"protobuf.encode records must be a numpy array of the record dtype "
                            f"of {schema.name} (max_bytes={table.max_bytes}, max_repeat="
                            f"{table.max_repeat}), {dtype}; got one of dtype {records.dtype}")
        if records.ndim != 1:
            raise TypeError(f"protobuf.encode records must be a 1-D array, not one of "
                            f"{records.ndim} dimensions")
        return records
    if isinstance(records, Message):
        records = [records]
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"protobuf.encode takes a numpy array of {schema.name} records, a list "
                        f"of {schema.name} messages or one message, not "
                        f"{type(records).__name__}")
    return schema.to_records(records, table.max_bytes, table.max_repeat)


def _batches(items: Sequence[bytes], answer: int) -> list[bytes]:
    k = batch_size(answer)
    return [b"".join(items[i:i + k]) for i in range(0, len(items), k)]


def encode_encode(params, records) -> list[bytes]:
    """``encode(records)``: the records, concatenated, in batches (see :func:`batch_size`)."""
    _, table, _ = _resolve(params)
    recs = _records(params, records)
    data = recs.tobytes()
    size = table.record_size
    if not size:  # a message type without fields: nothing to send, each encodes to b""
        return []
    items = [data[i:i + size] for i in range(0, len(data), size)]
    return _batches(items, encoded_bound(table))


def _split(response: bytes, what: str, bound: int) -> list[bytes]:
    # Length-delimited messages, each checked against the most the kernel can answer.
    out, pos = [], 0
    while pos < len(response):
        start, size, shift = pos, 0, 0
        while True:
            if pos >= len(response) or pos - start >= 10:
                raise ValueError(f"{what} answered a length prefix at byte {start} that is "
                                 f"cut short or over 10 bytes")
            b = response[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if pos - start + size > bound or pos + size > len(response):
            raise ValueError(f"{what} answered a message of {size} bytes at byte {start}: over "
                             f"the most a record encodes to ({bound}) or past the end of the "
                             f"answer ({len(response)} bytes)")
        out.append(bytes(response[pos:pos + size]))
        pos += size
    return out


def decode_encode(params, responses: Sequence[bytes], records) -> list[bytes]:
    _, table, _ = _resolve(params)
    count = len(_records(params, records))
    if not table.record_size:
        return [b""] * count
    out = _split(b"".join(responses), "protobuf.encode", encoded_bound(table))
    if len(out) != count:
        raise ValueError(f"protobuf.encode of {count} records answered {len(out)} messages")
    return out


def error_encode(params, response: Response, records) -> str:
    # The same text whichever device answered: made from the request, not the answer.
    _, table, _ = _resolve(params)
    _, problem = scan_encode(table, _records(params, records).tobytes())
    return problem or "malformed request"


def _messages(data) -> list[bytes]:
    # The call's serialized messages: one bytes-like, or a list of them.
    if isinstance(data, (list, tuple)):
        out = []
        for i, item in enumerate(data):
            try:
                out.append(as_bytes(item))
            except TypeError as e:
                raise TypeError(f"protobuf.decode message {i}: {e}") from None
    else:
        out = [as_bytes(data)]
    for i, m in enumerate(out):
        if len(m) > MAX_MESSAGE:
            raise ValueError(f"protobuf.decode message {i} is {len(m)} bytes, over the "
                             f"kernel's maximum of {MAX_MESSAGE}")
    return out


def encode_decode(params, data, messages: bool = False) -> list[bytes]:
    """``decode(data, messages=False)``: each message with its length prefix, in batches."""
    if not isinstance(messages, bool):
        raise TypeError(f"protobuf.decode messages must be True or False, not {messages!r}")
    _, table, _ = _resolve(params)
    framed = [varint(len(m)) + m for m in _messages(data)]
    return _batches(framed, table.record_size)


def decode_decode(params, responses: Sequence[bytes], data, messages: bool = False):
    schema, table, dtype = _resolve(params)
    response = b"".join(responses)
    count = len(_messages(data))
    if len(response) != count * table.record_size:
        raise ValueError(f"protobuf.decode of {count} messages answered {len(response)} bytes, "
                         f"not {count} records of {table.record_size}")
    records = np.frombuffer(response, dtype).copy() if dtype.itemsize else np.zeros(count, dtype)
    if messages:
        return schema.to_messages(records, table.max_bytes, table.max_repeat)
    return records


def error_decode(params, response: Response, data, messages: bool = False) -> str:
    # Each message alone, so the text names its index in the call and a byte of it.
    _, table, _ = _resolve(params)
    for i, m in enumerate(_messages(data)):
        prefix = varint(len(m))
        _, problem = scan_decode(table, prefix + m)
        if problem is not None:
            where, _, what = problem.partition(": ")
            at = int(where.rsplit(" ", 1)[1]) - len(prefix)
            return f"message {i} at byte {max(at, 0)}: {what}"
    return "malformed request"


def _max_encode(params, n: int) -> int:
    # Each whole record is at most encoded_bound bytes; a partial one is answered nothing.
    _, table, _ = _resolve(params)
    return n // table.record_size * encoded_bound(table) if table.record_size else 0


def _max_decode(params, n: int) -> int:
    # A message is at least one byte (its length prefix) and is answered with one record; the
    # codec puts at most batch_size(record_size) messages in a request.
    _, table, _ = _resolve(params)
    return min(n, batch_size(table.record_size)) * table.record_size


# -- the bench and the HIL suite -----------------------------------------------------------------

def _random_value(f, rng: random.Random, max_bytes: int):
    from google.protobuf.descriptor import FieldDescriptor as T

    t = f.type
    if t in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return rng.randint(-(1 << 31), (1 << 31) - 1) >> rng.randint(0, 31)
    if t in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return rng.getrandbits(32) >> rng.randint(0, 31)
    if t in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return rng.randint(-(1 << 63), (1 << 63) - 1) >> rng.randint(0, 63)
    if t in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return rng.getrandbits(64) >> rng.randint(0, 63)
    if t == T.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (T.TYPE_FLOAT, T.TYPE_DOUBLE):
        return float(np.float32(rng.uniform(-1e6, 1e6))) if t == T.TYPE_FLOAT else \
            rng.uniform(-1e12, 1e12)
    if t == T.TYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values])
    size = rng.randint(0, max_bytes)
    if t == T.TYPE_BYTES:
        return rng.randbytes(size)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 -_éλ€") for _ in range(size))
    while len(text.encode()) > max_bytes:
        text = text[:-1]
    return text


def _random_message(message, rng: random.Random, max_bytes: int, max_repeat: int):
    from google.protobuf.descriptor import FieldDescriptor as T

    for f in message.DESCRIPTOR.fields:
        if f.type == T.TYPE_MESSAGE:
            if rng.random() < 0.8:
                sub = getattr(message, f.name)
                sub.SetInParent()
                _random_message(sub, rng, max_bytes, max_repeat)
        elif f.is_repeated:
            getattr(message, f.name).extend(
                _random_value(f, rng, max_bytes) for _ in range(rng.randint(0, max_repeat)))
        else:
            setattr(message, f.name, _random_value(f, rng, max_bytes))
    return message


def workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
    """An encode of about ``size // record_size`` messages (at least one) of random values."""
    schema, table, _ = _resolve(params)
    count = max(1, size // max(1, table.record_size))
    msgs = [_random_message(schema.message_class(), rng, table.max_bytes, table.max_repeat)
            for _ in range(count)]
    return "encode", (msgs,)


# Bytes appended to a good message so that each kind of malformed message occurs.
_CORRUPTIONS = (
    b"\x00\x01",                      # field number 0
    b"\x0b",                          # wire type 3: a group
    b"\x0e\x00",                      # wire type 6
    b"\xf8\xff\xff\xff\x1f\x00",      # field number over 2**29 - 1
    b"\x78" + b"\xff" * 9 + b"\x7f",  # a varint whose 10th byte is above 0x01
    b"\x78" + b"\x80" * 11,           # a varint over 10 bytes
    b"\x7a\x05\x01",                  # a length past the end of the message
    b"\x7d\x01\x02",                  # an i32 past the end of the message
)


def strategies(params) -> dict:
    from hypothesis import strategies as st

    from .protobuf_schema import messages as message_strategy

    schema, table, _ = _resolve(params)
    msgs = message_strategy(schema, table.max_bytes, table.max_repeat)
    encode = st.lists(msgs, max_size=12).map(lambda ms: (ms,))
    good = msgs.map(lambda m: m.SerializeToString())
    bad = st.one_of(
        st.tuples(good, st.sampled_from(_CORRUPTIONS)).map(lambda t: t[0] + t[1]),
        good.filter(bool).map(lambda b: b[:-1]),  # cut short: a field runs past the end
        st.binary(max_size=40),
    )
    data = st.lists(st.one_of(good, good, good, bad), max_size=12)
    decode = st.one_of(data.map(lambda d: (d,)), data.map(lambda d: (d, True)))
    return {"encode": encode, "decode": decode}


def bench(params, op: str, args: tuple) -> dict:
    """The bench's figures of Google's library on this CPU, on the workload's messages: upb's
    ``SerializeToString`` and ``FromString``, per message and per wire byte."""
    from google.protobuf import __version__ as version
    from google.protobuf.internal import api_implementation

    from ..bench import time_call

    schema, _, _ = _resolve(params)
    (msgs,) = args
    wire = [m.SerializeToString() for m in msgs]
    size = sum(map(len, wire))
    cls = schema.message_class
    how = (f"protobuf {version} ({api_implementation.Type()}), {len(msgs)} {schema.name} "
           f"messages of {size / len(msgs):.0f} B on average, best of 5 timed batches")
    rows = []
    for what, fn in (("SerializeToString", lambda: [m.SerializeToString() for m in msgs]),
                     ("FromString", lambda: [cls.FromString(w) for w in wire])):
        seconds = time_call(fn)
        rows += [(f"{what} on this CPU", len(msgs) / seconds, "messages/s", how),
                 (f"{what} on this CPU, wire bytes", size / seconds / 1e6, "MB/s", how)]
    # The kernel's rate is compared with upb's (not with the CPU path's, whose records are
    # converted to and from message objects in Python).
    reference = ("upb SerializeToString", rows[0][1]) if op == "encode" else \
        ("upb FromString", rows[2][1])
    return {"items": len(msgs), "unit": "messages", "rows": rows, "reference": reference}


def fit(params) -> tuple[str, int, tuple[tuple[dict, int], tuple[dict, int]]]:
    """For ``offload build --per-kernel``, how many more fields the room left holds: the
    schema's fields, and two builds to measure a field's cost with at the same limits and
    width: the builtin ``Tiny`` schema (2 fields) and this schema, or the builtin ``Small`` (15
    fields of most kinds) if this one has too few fields to tell a field's cost from the
    noise of placement."""
    limits = int(params["max_bytes"]), int(params["max_repeat"])
    _, table, _ = _resolve(params)
    points = []
    for name in ("tiny", "small"):
        _, t, _ = _built(convert_param(name), *limits)
        points.append(({**params, "schema": name}, len(t.fields)))
    if len(table.fields) >= points[1][1]:
        points[1] = (dict(params), len(table.fields))
    return "fields", len(table.fields), (points[0], points[1])


SPEC = KernelSpec(
    name="protobuf", id=3, version=1,
    summary="protobuf messages of one proto3 schema: encode records, decode messages",
    gateware="offload.kernels.protobuf:gateware",
    model=ProtobufModel,
    operations=(
        Operation("encode", encode_encode, decode_encode, max_response=_max_encode,
                  error=error_encode, doc="records or message objects to serialized messages"),
        Operation("decode", encode_decode, decode_decode, max_response=_max_decode,
                  error=error_decode, doc="serialized messages to records or message objects"),
    ),
    params={
        "schema": Param("small", "the message type: a builtin name, file.proto:Message, "
                                 "module:Class, or a loaded schema's hash",
                        convert=convert_param),
        "max_bytes": Param(32, "longest string or bytes value", low=1, high=1024),
        "max_repeat": Param(8, "most values of a repeated field", low=1, high=255),
        "width": Param(1, "bytes per beat: 1, the byte-a-cycle engines (small); 8, the wide "
                          "encoder, a field a cycle", choices=(1, 8)),
    },
    # The iCE40 UP5K has room for the small engines only; the ECP5 for the wide encoder.
    board_params={"icebreaker": {"width": 1}, "ulx3s-85f": {"width": 8}},
    # The proof's schema is a varint and a string, with the smallest limits: every state of
    # both engines but those of repeated fields, with responses short enough for the bounded
    # check to see them end.
    proof_params={"schema": "tiny", "max_bytes": 1, "max_repeat": 1},
    workload=workload, strategies=strategies, bench=bench, fit=fit,
    default=False,  # built for one schema: in a device only when named or given parameters
)

