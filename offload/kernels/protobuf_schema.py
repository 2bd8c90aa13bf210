"""Protobuf schemas for the protobuf kernel: loading, checking, and records <-> messages.

The protobuf kernel is built for one proto3 message type. This module turns what a caller
names a schema with into a :class:`Schema` (:func:`load`), checks that the kernel can take it
(proto3, no oneof, map, group, extension, recursion; only scalars repeated; message fields at
most :data:`~hdl.kernels.protobuf_table.MAX_DEPTH` levels deep), flattens it into the
:class:`~hdl.kernels.protobuf_table.Table` the gateware is built from, and converts between
message objects and the kernel's records (their numpy dtype follows the table, so the CPU path
and the gateware agree on every byte).

A schema is named by:

* a generated message class, a message instance, or a ``Descriptor``;
* ``"small"`` or ``"blob"``: the builtin ``offload.bench.Small`` / ``offload.bench.Blob``
  (``offload/kernels/schemas/bench.proto``, compiled on first use);
* ``"path/to/file.proto:package.Message"``: compiled with the protoc that ``grpcio-tools``
  ships (in-process), its imports found beside the file and among the well-known types;
* ``"module.path:ClassName"``: an importable generated class;
* the schema's hash (16 hex digits), once a schema with that hash is loaded in this process.

Every loaded schema is registered by its hash (:func:`lookup`): the hash is what the kernel's
``schema`` parameter, the device manifest and the build cache carry (:func:`convert_param`).

Each ``.proto`` file set is compiled into its own private ``DescriptorPool``, so two schemas
that happen to use the same names (random test schemas, two versions of one file) coexist.
"""

from __future__ import annotations

import importlib
import importlib.resources
import itertools
import keyword
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from hdl.kernels.protobuf_table import MAX_DEPTH, Field, Table

from . import ParamError

__all__ = ["Schema", "SchemaError", "load", "lookup", "convert_param", "BUILTINS",
           "compile_proto", "schema_from_file_proto", "schemas", "messages", "proto_text",
           "MAX_LIMIT"]


class SchemaError(ParamError):
    """A schema the protobuf kernel cannot take, one that cannot be loaded, or a bad value."""


#: Builtin schema names and the message types they name (in ``schemas/bench.proto``).
BUILTINS = {"small": "offload.bench.Small", "blob": "offload.bench.Blob",
            "tiny": "offload.bench.Tiny"}
_BUILTIN_FILE = "bench.proto"

#: ``max_bytes`` and ``max_repeat`` are at most this (a record's ``len``/``count`` is a u2).
MAX_LIMIT = 0xFFFF

_HASH = re.compile(r"[0-9a-f]{16}")

# FieldDescriptor.TYPE_* -> numpy scalar type of one value in a record.
_SCALAR_DTYPE = {
    FieldDescriptor.TYPE_INT32: "<i4", FieldDescriptor.TYPE_SINT32: "<i4",
    FieldDescriptor.TYPE_SFIXED32: "<i4", FieldDescriptor.TYPE_ENUM: "<i4",
    FieldDescriptor.TYPE_UINT32: "<u4", FieldDescriptor.TYPE_FIXED32: "<u4",
    FieldDescriptor.TYPE_INT64: "<i8", FieldDescriptor.TYPE_SINT64: "<i8",
    FieldDescriptor.TYPE_SFIXED64: "<i8",
    FieldDescriptor.TYPE_UINT64: "<u8", FieldDescriptor.TYPE_FIXED64: "<u8",
    FieldDescriptor.TYPE_BOOL: "?",
    FieldDescriptor.TYPE_FLOAT: "<f4", FieldDescriptor.TYPE_DOUBLE: "<f8",
}
_BYTES_TYPES = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)

# Loaded schemas: by hash (the newest loaded with a hash wins, so records decode to the class
# the caller named last) and by descriptor (loading one type twice gives the same Schema).
_REGISTRY: dict[str, Schema] = {}
_BY_DESCRIPTOR: dict[Descriptor, Schema] = {}
_FILES: dict[tuple, Any] = {}  # compiled files and builtins, by path and mtime
_LOCK = threading.RLock()


# -- Schema ------------------------------------------------------------------------------------


class Schema:
    """One proto3 message type the protobuf kernel can be built for.

    ``Schema(descriptor)`` checks the type (raising :class:`SchemaError` naming the field and
    why) and registers it; most callers use :func:`load`.

    Attributes: ``descriptor`` (the message ``Descriptor``), ``message_class`` (the class
    :meth:`to_messages` makes), ``name`` (the message's full name), ``hash`` (16 hex digits
    naming the schema alone, ``table(1, 1).schema_hash``: the same for any limits).
    """

    def __init__(self, descriptor: Descriptor, message_class: type[Message] | None = None):
        if not isinstance(descriptor, Descriptor):
            raise SchemaError(f"a Schema is made from a message Descriptor, not "
                              f"{type(descriptor).__name__}")
        _check(descriptor)
        self.descriptor = descriptor
        self.message_class = message_class or message_factory.GetMessageClass(descriptor)
        self.name = descriptor.full_name
        self._tables: dict[tuple[int, int], Table] = {}
        self._dtypes: dict[tuple[int, int], np.dtype] = {}
        self.hash = self.table(1, 1).schema_hash
        with _LOCK:
            _REGISTRY[self.hash] = self

    def __repr__(self) -> str:
        return f"<Schema {self.name} {self.hash}>"

    # -- layout --------------------------------------------------------------------------------

    def table(self, max_bytes: int, max_repeat: int) -> Table:
        """The field table the kernel is built from, for these limits (cached)."""
        key = _limits(max_bytes, max_repeat)
        table = self._tables.get(key)
        if table is None:
            rows: list[dict] = []
            _flatten(self.descriptor, rows, parent=-1, depth=0, offset=0, limits=key)
            table = Table(self.name, tuple(Field(**row) for row in rows), *key)
            self._tables[key] = table
        return table

    def dtype(self, max_bytes: int, max_repeat: int) -> np.dtype:
        """The numpy dtype of one record (packed, little endian; names are the field names)."""
        key = _limits(max_bytes, max_repeat)
        dtype = self._dtypes.get(key)
        if dtype is None:
            dtype = np.dtype(_dtype_fields(self.descriptor, *key))
            assert dtype.itemsize == self.table(*key).record_size
            self._dtypes[key] = dtype
        return dtype

    # -- records <-> messages ------------------------------------------------------------------

    def to_records(self, messages: Iterable[Message], max_bytes: int,
                   max_repeat: int) -> np.ndarray:
        """Message objects of this type to records (canonical: all padding zero).

        Raises ``SchemaError`` (a ``ValueError``) naming the message's index and the field for
        a string or bytes value over ``max_bytes`` bytes (a string's UTF-8 encoding) or a
        repeated field with more than ``max_repeat`` values, and ``TypeError`` for an object
        that is not a message of this type.
        """
        msgs = list(messages)
        for i, m in enumerate(msgs):
            if not isinstance(m, Message) or m.DESCRIPTOR.full_name != self.name:
                what = m.DESCRIPTOR.full_name if isinstance(m, Message) else type(m).__name__
                raise TypeError(f"message {i}: a {what} is not a {self.name}")
        dtype = self.dtype(max_bytes, max_repeat)
        out = np.zeros(len(msgs), dtype)
        _write(out, msgs, list(range(len(msgs))), self.descriptor, "", max_bytes, max_repeat)
        return out

    def to_messages(self, records: np.ndarray | bytes, max_bytes: int,
                    max_repeat: int) -> list[Message]:
        """Records (an array of :meth:`dtype`, or their bytes) to message objects of this type.

        A message field whose ``present`` byte is 0 is left unset; a bool is true for any
        non-zero byte. Raises ``ValueError`` naming the record and the field for a string that
        is not valid UTF-8, a ``len`` over ``max_bytes`` or a ``count`` over ``max_repeat``.
        """
        dtype = self.dtype(max_bytes, max_repeat)
        if isinstance(records, np.ndarray) and records.dtype.names is not None:
            if records.dtype != dtype:
                raise TypeError(f"records of dtype {records.dtype} are not {self.name}'s "
                                f"records for max_bytes={max_bytes}, max_repeat={max_repeat}")
            recs = records.reshape(-1)
        else:
            data = bytes(memoryview(records).cast("B"))
            if dtype.itemsize == 0 and data:
                raise ValueError(f"{self.name} records are empty (the message has no fields): "
                                 f"give them as an array, not {len(data)} bytes")
            if dtype.itemsize and len(data) % dtype.itemsize:
                raise ValueError(f"{len(data)} bytes are not a whole number of {self.name} "
                                 f"records of {dtype.itemsize} bytes")
            recs = np.frombuffer(data, dtype)
        msgs = [self.message_class() for _ in range(len(recs))]
        _read(recs, msgs, list(range(len(recs))), self.descriptor, "", max_bytes, max_repeat)
        return msgs


def _limits(max_bytes: int, max_repeat: int) -> tuple[int, int]:
    for name, value in (("max_bytes", max_bytes), ("max_repeat", max_repeat)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) \
                or not 1 <= value <= MAX_LIMIT:
            raise SchemaError(f"{name} must be an integer from 1 to {MAX_LIMIT}, not {value!r}")
    return int(max_bytes), int(max_repeat)


def _fields(desc: Descriptor) -> list[FieldDescriptor]:
    return sorted(desc.fields, key=lambda f: f.number)


def _flatten(desc: Descriptor, rows: list[dict], parent: int, depth: int, offset: int,
             limits: tuple[int, int]) -> int:
    """Append ``desc``'s fields to ``rows`` in pre-order; answer the offset after them."""
    max_bytes, max_repeat = limits
    for f in _fields(desc):
        index = len(rows)
        type_name = ""
        if f.message_type is not None:
            type_name = f.message_type.full_name
        elif f.enum_type is not None:
            type_name = f.enum_type.full_name
        row = dict(name=f.name, number=f.number, type=f.type, repeated=f.is_repeated,
                   offset=offset, parent=parent, depth=depth, end=index + 1,
                   type_name=type_name)
        rows.append(row)
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            offset = _flatten(f.message_type, rows, index, depth + 1, offset + 1, limits)
            row["end"] = len(rows)
        elif f.type in _BYTES_TYPES:
            offset += 2 + max_bytes
        elif f.is_repeated:
            offset += 2 + max_repeat * np.dtype(_SCALAR_DTYPE[f.type]).itemsize
        else:
            offset += np.dtype(_SCALAR_DTYPE[f.type]).itemsize
    return offset


def _dtype_fields(desc: Descriptor, max_bytes: int, max_repeat: int) -> list[tuple]:
    out: list[tuple] = []
    for f in _fields(desc):
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            out.append((f.name, [("present", "u1"),
                                 *_dtype_fields(f.message_type, max_bytes, max_repeat)]))
        elif f.type in _BYTES_TYPES:
            out.append((f.name, [("len", "<u2"), ("data", "u1", (max_bytes,))]))
        elif f.is_repeated:
            out.append((f.name, [("count", "<u2"),
                                 ("items", _SCALAR_DTYPE[f.type], (max_repeat,))]))
        else:
            out.append((f.name, _SCALAR_DTYPE[f.type]))
    return out


def _write(out: np.ndarray, msgs: Sequence[Message], rows: Sequence[int], desc: Descriptor,
           prefix: str, max_bytes: int, max_repeat: int) -> None:
    """Fill ``out`` (records of ``desc``, one per message) from ``msgs``.

    ``rows`` are the messages' indices in the call (for the error messages).
    """
    for f in _fields(desc):
        path = prefix + f.name
        col = out[f.name]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            present = [i for i, m in enumerate(msgs) if m.HasField(f.name)]
            if not present:
                continue
            sub = np.zeros(len(present), col.dtype)
            sub["present"] = 1
            _write(sub, [getattr(msgs[i], f.name) for i in present],
                   [rows[i] for i in present], f.message_type, path + ".", max_bytes,
                   max_repeat)
            col[present] = sub
        elif f.type in _BYTES_TYPES:
            values = [getattr(m, f.name) for m in msgs]
            if f.type == FieldDescriptor.TYPE_STRING:
                values = [v.encode() for v in values]
            lens = np.fromiter(map(len, values), np.int64, len(values))
            if len(lens) and lens.max() > max_bytes:
                i = int(np.argmax(lens > max_bytes))
                raise SchemaError(f"message {rows[i]}: field {path}: {_kind(f)} of {lens[i]} "
                                  f"bytes is over max_bytes ({max_bytes})")
            col["len"] = lens
            data = col["data"]
            for i, v in enumerate(values):
                if v:
                    data[i, :len(v)] = np.frombuffer(v, np.uint8)
        elif f.is_repeated:
            values = [getattr(m, f.name) for m in msgs]
            counts = np.fromiter(map(len, values), np.int64, len(values))
            if len(counts) and counts.max() > max_repeat:
                i = int(np.argmax(counts > max_repeat))
                raise SchemaError(f"message {rows[i]}: field {path}: {counts[i]} values are "
                                  f"more than max_repeat ({max_repeat})")
            col["count"] = counts
            items = col["items"]
            for i, v in enumerate(values):
                if len(v):
                    items[i, :len(v)] = list(v)
        else:
            col[...] = np.array([getattr(m, f.name) for m in msgs], col.dtype)


def _read(recs: np.ndarray, msgs: Sequence[Message], rows: Sequence[int], desc: Descriptor,
          prefix: str, max_bytes: int, max_repeat: int) -> None:
    """Set the fields of ``msgs`` (new, one per record) from ``recs`` (records of ``desc``)."""
    for f in _fields(desc):
        path = prefix + f.name
        col = recs[f.name]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            present = np.flatnonzero(col["present"]).tolist()
            if not present:
                continue
            subs = [getattr(msgs[i], f.name) for i in present]
            for s in subs:
                s.SetInParent()
            _read(col[present], subs, [rows[i] for i in present], f.message_type, path + ".",
                  max_bytes, max_repeat)
        elif f.type in _BYTES_TYPES:
            lens = col["len"].tolist()
            data = col["data"]
            for i, n in enumerate(lens):
                if not n:
                    continue
                if n > max_bytes:
                    raise ValueError(f"record {rows[i]}: field {path}: len {n} is over "
                                     f"max_bytes ({max_bytes})")
                value = data[i, :n].tobytes()
                if f.type == FieldDescriptor.TYPE_STRING:
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(f"record {rows[i]}: field {path}: the string is not "
                                         f"valid UTF-8 ({e.reason} at byte {e.start})") from None
                setattr(msgs[i], f.name, value)
        elif f.is_repeated:
            counts = col["count"].tolist()
            items = col["items"]
            if f.type == FieldDescriptor.TYPE_BOOL:
                items = items.view(np.uint8) != 0
            for i, n in enumerate(counts):
                if not n:
                    continue
                if n > max_repeat:
                    raise ValueError(f"record {rows[i]}: field {path}: count {n} is over "
                                     f"max_repeat ({max_repeat})")
                getattr(msgs[i], f.name).extend(items[i, :n].tolist())
        else:
            if f.type == FieldDescriptor.TYPE_BOOL:
                col = col.view(np.uint8) != 0
            for m, v in zip(msgs, col.tolist(), strict=True):
                if v:
                    setattr(m, f.name, v)
                elif f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
                    setattr(m, f.name, v)  # -0.0 is not the default: keep its sign


def _kind(f: FieldDescriptor) -> str:
    return "a string" if f.type == FieldDescriptor.TYPE_STRING else "a bytes value"


# -- checks ------------------------------------------------------------------------------------


def _file_syntax(file) -> str:
    """``file``'s syntax (protobuf 5+ descriptors have no ``syntax``: read its proto)."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    if proto.syntax:
        return proto.syntax  # "proto3", "proto2" or "editions"
    return "editions" if proto.HasField("edition") else "proto2"  # no syntax: proto2


def _check(desc: Descriptor, stack: tuple[Descriptor, ...] = (), depth: int = 0) -> None:
    """Raise SchemaError, naming the field and why, if the kernel cannot take ``desc``."""
    top = (stack or (desc,))[0].full_name
    where = f"{desc.full_name}" if not stack else f"{desc.full_name} (in {top})"
    syntax = _file_syntax(desc.file)
    if syntax != "proto3":
        raise SchemaError(f"message {where} is {syntax} ({desc.file.name}); the protobuf kernel "
                          f"takes only proto3 schemas")
    if desc.extensions or desc.extension_ranges:
        raise SchemaError(f"message {where} has extensions; the protobuf kernel takes none")
    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)
    optional = {f.name for f in proto.field if f.proto3_optional}
    stack = (*stack, desc)
    for f in _fields(desc):
        name = f"{desc.full_name}.{f.name}"
        if f.name in optional:
            raise SchemaError(f"field {name} is a proto3 'optional' field (a synthetic oneof); "
                              f"the protobuf kernel takes no oneof")
        if f.containing_oneof is not None:
            raise SchemaError(f"field {name} is in oneof {f.containing_oneof.name}; the "
                              f"protobuf kernel takes no oneof")
        if f.type == FieldDescriptor.TYPE_GROUP:
            raise SchemaError(f"field {name} is a group; the protobuf kernel takes no groups")
        if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            raise SchemaError(f"field {name} is a map; the protobuf kernel takes no map fields")
        if f.is_repeated and (f.type in _BYTES_TYPES or f.type == FieldDescriptor.TYPE_MESSAGE):
            kind = {FieldDescriptor.TYPE_MESSAGE: "message",
                    FieldDescriptor.TYPE_STRING: "string"}.get(f.type, "bytes")
            raise SchemaError(f"field {name} is a repeated {kind}; the protobuf kernel takes "
                              f"only scalars (numbers, bools, enums) repeated")
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            sub = f.message_type
            if sub in stack or any(s.full_name == sub.full_name for s in stack):
                raise SchemaError(f"field {name} makes {sub.full_name} recursive; the protobuf "
                                  f"kernel takes no recursive message types")
            if depth + 1 > MAX_DEPTH:
                raise SchemaError(f"field {name} nests messages {depth + 1} levels below "
                                  f"{top}; the protobuf kernel takes at most {MAX_DEPTH}")
            names = {g.name for g in sub.fields}
            if "present" in names:
                raise SchemaError(f"field {sub.full_name}.present: 'present' is the name of a "
                                  f"nested message's presence byte in the records; rename the "
                                  f"field (message {sub.full_name} is nested in {top})")
            _check(sub, stack, depth + 1)


# -- loading -----------------------------------------------------------------------------------


def load(value: Any) -> Schema:
    """The :class:`Schema` that ``value`` names (see the module's docstring for the forms)."""
    if isinstance(value, Schema):
        return value
    if isinstance(value, type) and issubclass(value, Message):
        return _from_descriptor(value.DESCRIPTOR, value)
    if isinstance(value, Message):
        return _from_descriptor(value.DESCRIPTOR, type(value))
    if isinstance(value, Descriptor):
        return _from_descriptor(value, None)
    if isinstance(value, str):
        text = value.strip()
        if _HASH.fullmatch(text):
            return lookup(text)
        if text in BUILTINS:
            return _builtin(text)
        if ":" in text:
            left, right = text.rsplit(":", 1)
            if left.endswith(".proto"):
                return _from_file(left, right)
            return _from_module(left, right)
        raise SchemaError(f"schema {value!r} is not a builtin ({', '.join(BUILTINS)}), a "
                          f"'file.proto:package.Message', a 'module:Class' or a schema hash")
    raise SchemaError(f"a schema is a message class, a message, a Descriptor or a string, not "
                      f"{type(value).__name__} {value!r}")


def lookup(hash: str) -> Schema:
    """The schema with this hash, if one is loaded in this process."""
    with _LOCK:
        schema = _REGISTRY.get(hash)
    if schema is None:
        raise SchemaError(
            f"protobuf schema {hash} is not loaded in this process; load it by passing "
            f"params={{'protobuf': {{'schema': <message class or 'file.proto:Message'>}}}} to "
            f"offload.open, or --kernel protobuf:schema=file.proto:Message on the command line")
    return schema


def convert_param(value: object) -> str:
    """The ``Param.convert`` of the kernel's ``schema`` parameter: any schema to its hash.

    A hash is taken as it is even if no schema with it is loaded here (a device's manifest may
    name one this process has not loaded; a call that needs the schema raises then).
    """
    if isinstance(value, str) and _HASH.fullmatch(value.strip()):
        return value.strip()
    try:
        return load(value).hash
    except SchemaError as e:
        raise SchemaError(" ".join(str(e).split())) from None


def _from_descriptor(desc: Descriptor, cls: type[Message] | None) -> Schema:
    with _LOCK:
        schema = _BY_DESCRIPTOR.get(desc)
        if schema is None or (cls is not None and schema.message_class is not cls):
            schema = Schema(desc, cls)
            _BY_DESCRIPTOR[desc] = schema
        _REGISTRY[schema.hash] = schema
        return schema


def _from_module(module: str, attr: str) -> Schema:
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise SchemaError(f"schema {module}:{attr}: cannot import {module} ({e})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SchemaError(f"schema {module}:{attr}: {module} has no {attr}") from None
    if not (isinstance(obj, type) and issubclass(obj, Message)):
        raise SchemaError(f"schema {module}:{attr} is a {type(obj).__name__}, not a generated "
                          f"message class")
    return load(obj)


def _builtin(name: str) -> Schema:
    full = BUILTINS[name]
    with _LOCK:
        key = ("builtin", name)
        if key not in _FILES:
            ref = importlib.resources.files(__package__) / "schemas" / _BUILTIN_FILE
            with importlib.resources.as_file(ref) as path:
                pool = _pool(compile_proto(path))
            _FILES[key] = _from_descriptor(pool.FindMessageTypeByName(full), None)
        schema = _FILES[key]
        _REGISTRY[schema.hash] = schema
        return schema


def _from_file(file: str, message: str) -> Schema:
    path = Path(file).expanduser()
    try:
        stat = path.resolve().stat()
    except OSError as e:
        raise SchemaError(f"schema {file}:{message}: cannot read {file} ({e.strerror})") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        compiled = _FILES.get(key)
    if compiled is None:
        fds = compile_proto(path)
        compiled = (fds, _pool(fds))
        with _LOCK:
            _FILES[key] = compiled
    fds, pool = compiled
    main = fds.file[-1]
    for name in (message, f"{main.package}.{message}"):
        try:
            desc = pool.FindMessageTypeByName(name)
        except KeyError:
            continue
        return _from_descriptor(desc, None)
    have = ", ".join(_message_names(main)) or "none"
    raise SchemaError(f"schema {file}:{message}: {file} has no message {message} (it has: "
                      f"{have})")


def _message_names(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    out = []

    def walk(prefix: str, types) -> None:
        for t in types:
            out.append(prefix + t.name)
            walk(prefix + t.name + ".", t.nested_type)

    walk(f"{file.package}." if file.package else "", file.message_type)
    return out


def _pool(fds: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """A new private pool holding every file of ``fds`` (dependencies first, as protoc gives)."""
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        try:
            pool.Add(file)
        except (TypeError, ValueError) as e:
            raise SchemaError(f"cannot load {file.name}: {e}") from None
    return pool


_PROTOC_LOCK = threading.Lock()


def compile_proto(path: str | os.PathLike) -> descriptor_pb2.FileDescriptorSet:
    """Compile a ``.proto`` file (with its imports) with grpcio-tools' protoc, in-process.

    Imports are found beside the file and among protobuf's well-known types. Raises
    :class:`SchemaError` with protoc's own message if it fails.
    """
    from grpc_tools import protoc  # only needed to compile: imported here

    path = Path(path).resolve()
    include = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="offload-protoc-") as tmp:
        out = Path(tmp) / "set.pb"
        err = Path(tmp) / "stderr"
        args = ["protoc", f"--descriptor_set_out={out}", "--include_imports",
                f"-I{path.parent}", f"-I{include}", str(path)]
        with _PROTOC_LOCK, open(err, "w+b") as err_file:
            saved = os.dup(2)
            try:
                os.dup2(err_file.fileno(), 2)
                rc = protoc.main(args)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            err_file.seek(0)
            message = err_file.read().decode(errors="replace").strip()
        if rc != 0 or not out.exists():
            raise SchemaError(f"protoc cannot compile {path.name}: "
                              f"{message or f'exit status {rc}'}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def schema_from_file_proto(files: Sequence[descriptor_pb2.FileDescriptorProto],
                           message: str) -> Schema:
    """A schema from ``FileDescriptorProto``s (dependencies first), in a private pool."""
    fds = descriptor_pb2.FileDescriptorSet(file=list(files))
    pool = _pool(fds)
    try:
        desc = pool.FindMessageTypeByName(message)
    except KeyError:
        raise SchemaError(f"no message {message} in {files[-1].name}") from None
    return _from_descriptor(desc, None)


# -- .proto text -------------------------------------------------------------------------------


def proto_text(schema: Schema | Any) -> str:
    """The schema written back as ``.proto`` text (proto3), the same full names throughout.

    Every message and enum type the schema uses is written, nested as in its full name (a
    type nested in a message the schema does not use is written inside an empty message of
    that name). All must be in the top-level message's package; raises SchemaError otherwise.
    """
    schema = load(schema)
    package = schema.descriptor.file.package
    types: dict[str, Descriptor | EnumDescriptor] = {}

    def collect(desc: Descriptor) -> None:
        types[desc.full_name] = desc
        for f in desc.fields:
            if f.message_type is not None:
                collect(f.message_type)
            elif f.enum_type is not None:
                types[f.enum_type.full_name] = f.enum_type

    collect(schema.descriptor)
    tree: dict = {}
    for full, desc in types.items():
        if desc.file.package != package:
            raise SchemaError(f"proto_text: {full} is not in package {package!r} as "
                              f"{schema.name} is; write them as separate files")
        rel = full[len(package) + 1:] if package else full
        node = tree
        for part in rel.split("."):
            node = node.setdefault(part, {})
        node[None] = desc

    lines = ['syntax = "proto3";', ""]
    if package:
        lines += [f"package {package};", ""]

    def emit(name: str, node: dict, indent: str) -> None:
        desc = node.get(None)
        if isinstance(desc, EnumDescriptor):
            lines.append(f"{indent}enum {name} {{")
            if desc.GetOptions().allow_alias:
                lines.append(f"{indent}  option allow_alias = true;")
            for v in desc.values:
                lines.append(f"{indent}  {v.name} = {v.number};")
            lines.append(f"{indent}}}")
            return
        lines.append(f"{indent}message {name} {{")
        for child, sub in node.items():
            if child is not None:
                emit(child, sub, indent + "  ")
        if desc is not None:
            for f in _fields(desc):
                if f.message_type is not None:
                    kind = "." + f.message_type.full_name
                elif f.enum_type is not None:
                    kind = "." + f.enum_type.full_name
                else:
                    kind = _TYPE_KEYWORD[f.type]
                label = "repeated " if f.is_repeated else ""
                lines.append(f"{indent}  {label}{kind} {f.name} = {f.number};")
        lines.append(f"{indent}}}")

    for name, node in tree.items():
        emit(name, node, "")
        lines.append("")
    return "\n".join(lines)


_TYPE_KEYWORD = {
    FieldDescriptor.TYPE_DOUBLE: "double", FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32", FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64", FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


# -- hypothesis strategies ---------------------------------------------------------------------

_SCALAR_TYPES = tuple(t for t in _TYPE_KEYWORD if t not in _BYTES_TYPES)
_FILE_COUNTER = itertools.count()
_RESERVED_NAMES = frozenset({"present"}) | frozenset(keyword.kwlist)


def schemas(max_depth: int = 2, max_fields: int = 8):
    """A hypothesis strategy of random schemas the kernel can take.

    Each is a fresh proto3 file (its own package and private pool) with a top-level message of
    up to ``max_fields`` fields of random types (every scalar type, string, bytes, an enum,
    nested messages down to ``max_depth`` levels), random field numbers (1 to 2**29 - 1, not
    19000-19999) and names, scalars singular or repeated.
    """
    from hypothesis import strategies as st

    names = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True).filter(
        lambda s: s not in _RESERVED_NAMES)
    numbers = st.one_of(st.integers(1, 20), st.integers(1, (1 << 29) - 1)).filter(
        lambda n: not 19000 <= n <= 19999)
    int32 = st.integers(-(1 << 31), (1 << 31) - 1)

    @st.composite
    def build(draw):
        n = next(_FILE_COUNTER)
        package = f"hyp{n}"
        file = descriptor_pb2.FileDescriptorProto(name=f"hyp{n}.proto", package=package,
                                                  syntax="proto3")
        enum_values = draw(st.lists(int32.filter(bool), max_size=4, unique=True))
        enum = file.enum_type.add(name="Kind")
        for i, v in enumerate([0, *enum_values]):
            enum.value.add(name=f"KIND_V{i}", number=v)
        counter = itertools.count()

        def message(depth: int) -> str:
            name = f"M{next(counter)}"
            msg = file.message_type.add(name=name)
            count = draw(st.integers(0, max_fields))
            field_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
            field_numbers = draw(st.lists(numbers, min_size=count, max_size=count,
                                          unique=True))
            for fname, number in zip(field_names, field_numbers, strict=True):
                choices = ["scalar", "scalar", "bytes", "enum"]
                if depth < max_depth:
                    choices.append("message")
                what = draw(st.sampled_from(choices))
                field = msg.field.add(name=fname, number=number,
                                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
                if what == "message":
                    field.type = FieldDescriptor.TYPE_MESSAGE
                    field.type_name = f".{package}.{message(depth + 1)}"
                elif what == "bytes":
                    field.type = draw(st.sampled_from(_BYTES_TYPES))
                else:
                    if what == "enum":
                        field.type = FieldDescriptor.TYPE_ENUM
                        field.type_name = f".{package}.Kind"
                    else:
                        field.type = draw(st.sampled_from(_SCALAR_TYPES))
                    if draw(st.booleans()):
                        field.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            return name

        top = message(0)
        return schema_from_file_proto([file], f"{package}.{top}")

    return build()


def messages(schema: Schema | Any, max_bytes: int, max_repeat: int):
    """A hypothesis strategy of messages of ``schema`` that fit the limits.

    Every value over its type's full range (0, negative, the extremes); floats are any but NaN
    (a NaN is not equal to itself, so messages holding one never compare equal; infinities and
    -0.0 are in); strings any Unicode text whose UTF-8 fits ``max_bytes``; enums their values
    and any other int32 (proto3 enums are open); nested messages present or absent.
    """
    from hypothesis import strategies as st

    schema = load(schema)
    _limits(max_bytes, max_repeat)
    T = FieldDescriptor

    def fit(s: str) -> str:
        while len(s.encode()) > max_bytes:
            s = s[:-1]
        return s

    def scalar(f: FieldDescriptor):
        t = f.type
        if t in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
            return st.integers(-(1 << 31), (1 << 31) - 1)
        if t in (T.TYPE_UINT32, T.TYPE_FIXED32):
            return st.integers(0, (1 << 32) - 1)
        if t in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
            return st.integers(-(1 << 63), (1 << 63) - 1)
        if t in (T.TYPE_UINT64, T.TYPE_FIXED64):
            return st.integers(0, (1 << 64) - 1)
        if t == T.TYPE_BOOL:
            return st.booleans()
        if t == T.TYPE_FLOAT:
            return st.floats(width=32, allow_nan=False)
        if t == T.TYPE_DOUBLE:
            return st.floats(allow_nan=False)
        if t == T.TYPE_ENUM:
            return st.one_of(st.sampled_from([v.number for v in f.enum_type.values]),
                             st.integers(-(1 << 31), (1 << 31) - 1))
        if t == T.TYPE_STRING:
            return st.text(st.characters(codec="utf-8"), max_size=max_bytes).map(fit)
        if t == T.TYPE_BYTES:
            return st.binary(max_size=max_bytes)
        raise AssertionError(t)

    def values(desc: Descriptor):
        parts = {}
        for f in desc.fields:
            if f.type == T.TYPE_MESSAGE:
                parts[f.name] = st.none() | values(f.message_type)
            elif f.is_repeated:
                parts[f.name] = st.lists(scalar(f), max_size=max_repeat)
            else:
                parts[f.name] = scalar(f)
        return st.fixed_dictionaries(parts)

    def fill(msg: Message, vals: dict) -> None:
        for f in msg.DESCRIPTOR.fields:
            v = vals[f.name]
            if f.type == T.TYPE_MESSAGE:
                if v is not None:
                    sub = getattr(msg, f.name)
                    sub.SetInParent()
                    fill(sub, v)
            elif f.is_repeated:
                getattr(msg, f.name).extend(v)
            else:
                setattr(msg, f.name, v)

    def make(vals: dict) -> Message:
        msg = schema.message_class()
        fill(msg, vals)
        return msg

    return values(schema.descriptor).map(make)
