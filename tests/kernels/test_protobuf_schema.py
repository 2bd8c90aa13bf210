"""The protobuf kernel's schemas: loading, checks, the table and dtype, records <-> messages."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdl.kernels.protobuf_table import MAX_DEPTH
from offload.kernels import ParamError
from offload.kernels import protobuf_schema as ps
from offload.kernels.protobuf_schema import Schema, SchemaError

FDP = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = FDP.LABEL_OPTIONAL, FDP.LABEL_REPEATED

_files = iter(range(10**9))


def make_file(syntax: str = "proto3", package: str | None = None):
    """A fresh FileDescriptorProto (its own name and package)."""
    n = next(_files)
    return descriptor_pb2.FileDescriptorProto(name=f"t{n}.proto", package=package or f"t{n}",
                                              syntax=syntax)


def add_message(file, name, *fields):
    """Add message ``name`` with ``fields`` (name, number, type[, label[, type_name]])."""
    msg = file.message_type.add(name=name)
    for spec in fields:
        fname, number, ftype, *rest = spec
        f = msg.field.add(name=fname, number=number, type=ftype,
                          label=rest[0] if rest else OPTIONAL)
        if len(rest) > 1:
            f.type_name = rest[1]
    return msg


def schema_of(file, name="M", deps=()):
    return ps.schema_from_file_proto([*deps, file], f"{file.package}.{name}")


def dtype_offset(dtype: np.dtype, path: list[str]) -> int:
    """The byte offset of the field at ``path`` (names, outer first) in ``dtype``."""
    offset = 0
    for name in path:
        sub, off = dtype.fields[name][:2]
        offset += off
        dtype = sub
    return offset


def check_layout(schema: Schema, max_bytes: int, max_repeat: int) -> None:
    table = schema.table(max_bytes, max_repeat)
    dtype = schema.dtype(max_bytes, max_repeat)
    assert dtype.itemsize == table.record_size
    for i, f in enumerate(table.fields):
        path, j = [f.name], f.parent
        while j != -1:
            path.insert(0, table.fields[j].name)
            j = table.fields[j].parent
        assert dtype_offset(dtype, path) == f.offset, (i, f)
        assert table.size(i) == _dtype_at(dtype, path).itemsize


def _dtype_at(dtype: np.dtype, path: list[str]) -> np.dtype:
    for name in path:
        dtype = dtype.fields[name][0]
    return dtype


# -- loading -----------------------------------------------------------------------------------


def test_builtins():
    small, blob = ps.load("small"), ps.load("blob")
    assert small.name == "offload.bench.Small" and blob.name == "offload.bench.Blob"
    assert ps.load("small") is small  # compiled once
    assert [f.name for f in small.descriptor.fields] == [
        "id", "kind", "delta", "flag", "crc", "score", "name", "payload", "tags", "inner",
        "ratio", "color"]
    assert small.table(1, 1).depth == 1
    assert len(small.hash) == 16 and small.hash == small.table(64, 8).schema_hash
    assert small.hash != small.table(64, 8).hash  # the table's own hash has the limits
    assert ps.lookup(small.hash) is small
    for name in ps.BUILTINS:
        check_layout(ps.load(name), 64, 8)


def test_load_class_instance_descriptor_hash():
    s = ps.load(timestamp_pb2.Timestamp)
    assert s.message_class is timestamp_pb2.Timestamp
    assert s.name == "google.protobuf.Timestamp"
    assert ps.load(timestamp_pb2.Timestamp(seconds=3)) is s
    assert ps.load(timestamp_pb2.Timestamp.DESCRIPTOR) is s
    assert ps.load(s.hash) is s and ps.load(s) is s
    assert ps.lookup(s.hash) is s


def test_load_module_class():
    s = ps.load("google.protobuf.timestamp_pb2:Timestamp")
    assert s.message_class is timestamp_pb2.Timestamp
    with pytest.raises(SchemaError, match="cannot import no_such_module"):
        ps.load("no_such_module:Foo")
    with pytest.raises(SchemaError, match="has no Nope"):
        ps.load("google.protobuf.timestamp_pb2:Nope")
    with pytest.raises(SchemaError, match="not a generated message class"):
        ps.load("numpy:zeros")
    with pytest.raises(SchemaError, match="proto2"):
        ps.load("google.protobuf.descriptor_pb2:FileDescriptorProto")


def test_load_proto_file(tmp_path):
    (tmp_path / "dep.proto").write_text(
        'syntax = "proto3";\npackage dep;\nmessage D { sint64 x = 1; }\n')
    (tmp_path / "m.proto").write_text(
        'syntax = "proto3";\npackage my.pkg;\nimport "dep.proto";\n'
        'import "google/protobuf/timestamp.proto";\n'
        "message M { string s = 1; dep.D d = 2; google.protobuf.Timestamp t = 3; }\n")
    s = ps.load(f"{tmp_path / 'm.proto'}:my.pkg.M")
    assert s.name == "my.pkg.M"
    assert [f.name for f in s.table(4, 4).fields] == ["s", "d", "x", "t", "seconds", "nanos"]
    assert ps.load(f"{tmp_path / 'm.proto'}:M") is s  # the package may be left out
    assert ps.load(s.hash) is s
    check_layout(s, 5, 3)
    with pytest.raises(SchemaError, match=r"has no message Nope \(it has: my.pkg.M\)"):
        ps.load(f"{tmp_path / 'm.proto'}:Nope")
    with pytest.raises(SchemaError, match="cannot read"):
        ps.load(f"{tmp_path / 'none.proto'}:M")
    (tmp_path / "bad.proto").write_text('syntax = "proto3";\nmessage B { strin s = 1; }\n')
    with pytest.raises(SchemaError, match=r"protoc cannot compile bad.proto: .*strin"):
        ps.load(f"{tmp_path / 'bad.proto'}:B")


def test_same_names_coexist(tmp_path):
    a = make_file(package="same")
    add_message(a, "M", ("x", 1, FD.TYPE_INT32))
    b = make_file(package="same")
    add_message(b, "M", ("x", 1, FD.TYPE_STRING), ("y", 2, FD.TYPE_BOOL))
    sa, sb = schema_of(a), schema_of(b)
    assert sa.name == sb.name and sa.hash != sb.hash
    assert ps.lookup(sa.hash) is sa and ps.lookup(sb.hash) is sb
    assert sa.message_class(x=3).x == 3 and sb.message_class(x="t").x == "t"
    for i, text in enumerate(['int32 x = 1;', 'string x = 1; bool y = 2;']):
        path = tmp_path / f"v{i}" / "same.proto"
        path.parent.mkdir()
        path.write_text(f'syntax = "proto3";\npackage same;\nmessage M {{ {text} }}\n')
    fa, fb = ps.load(f"{tmp_path}/v0/same.proto:same.M"), ps.load(f"{tmp_path}/v1/same.proto:M")
    assert (fa.hash, fb.hash) == (sa.hash, sb.hash)


def test_lookup_unknown_and_convert_param():
    with pytest.raises(SchemaError, match="not loaded in this process.*offload.open.*--kernel"):
        ps.lookup("0123456789abcdef")
    assert ps.convert_param("0123456789abcdef") == "0123456789abcdef"  # known or not
    assert ps.convert_param("small") == ps.load("small").hash
    assert ps.convert_param(timestamp_pb2.Timestamp) == ps.load(timestamp_pb2.Timestamp).hash
    for bad in ["nonsense", 42, "no_such_module:X", "nowhere.proto:M"]:
        with pytest.raises(ParamError) as e:
            ps.convert_param(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(SchemaError, match="not a builtin"):
        ps.load("nonsense")
    with pytest.raises(SchemaError, match="not int"):
        ps.load(42)


def test_empty_message():
    f = make_file()
    add_message(f, "M")
    s = schema_of(f)
    assert s.table(1, 1).record_size == 0 and s.dtype(1, 1).itemsize == 0
    recs = s.to_records([s.message_class(), s.message_class()], 1, 1)
    assert len(recs) == 2 and recs.tobytes() == b""
    assert s.to_messages(recs, 1, 1) == [s.message_class(), s.message_class()]


# -- checks ------------------------------------------------------------------------------------


def test_rejects_proto2_and_editions():
    f = make_file(syntax="proto2")
    add_message(f, "M", ("x", 1, FD.TYPE_INT32))
    with pytest.raises(SchemaError, match=r"is proto2 .*only proto3"):
        schema_of(f)
    f = make_file(syntax="editions")
    f.edition = descriptor_pb2.EDITION_2023
    add_message(f, "M", ("x", 1, FD.TYPE_INT32))
    with pytest.raises(SchemaError, match=r"is editions .*only proto3"):
        schema_of(f)


def test_rejects_oneof_and_optional():
    f = make_file()
    m = add_message(f, "M", ("x", 1, FD.TYPE_INT32))
    m.oneof_decl.add(name="choice")
    m.field[0].oneof_index = 0
    m.field.add(name="y", number=2, type=FD.TYPE_INT32, label=OPTIONAL, oneof_index=0)
    with pytest.raises(SchemaError, match=r"field t\d+\.M\.x is in oneof choice"):
        schema_of(f)
    f = make_file()
    m = add_message(f, "M", ("x", 1, FD.TYPE_INT32))
    m.oneof_decl.add(name="_x")
    m.field[0].oneof_index = 0
    m.field[0].proto3_optional = True
    with pytest.raises(SchemaError, match=r"field t\d+\.M\.x is a proto3 'optional' field"):
        schema_of(f)


def test_rejects_map():
    f = make_file()
    m = add_message(f, "M")
    entry = m.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=FD.TYPE_STRING, label=OPTIONAL)
    entry.field.add(name="value", number=2, type=FD.TYPE_INT32, label=OPTIONAL)
    m.field.add(name="tags", number=1, type=FD.TYPE_MESSAGE, label=REPEATED,
                type_name=f".{f.package}.M.TagsEntry")
    with pytest.raises(SchemaError, match=r"field t\d+\.M\.tags is a map"):
        schema_of(f)


def test_rejects_group():
    # protoc writes no group in proto3, but a descriptor pool takes one: the check names it.
    f = make_file()
    add_message(f, "G", ("a", 1, FD.TYPE_INT32))
    add_message(f, "M", ("g", 1, FD.TYPE_GROUP, OPTIONAL, f".{f.package}.G"))
    with pytest.raises(SchemaError, match=r"field t\d+\.M\.g is a group"):
        schema_of(f)


def test_rejects_extensions():
    opts = descriptor_pb2.FileDescriptorProto()
    descriptor_pb2.DESCRIPTOR.CopyToProto(opts)
    f = make_file()
    f.dependency.append(opts.name)
    m = add_message(f, "M", ("x", 1, FD.TYPE_INT32))
    m.extension.add(name="flag", number=50001, type=FD.TYPE_BOOL, label=OPTIONAL,
                    extendee=".google.protobuf.FieldOptions")
    with pytest.raises(SchemaError, match=r"message t\d+\.M has extensions"):
        schema_of(f, deps=[opts])


@pytest.mark.parametrize("ftype,kind", [(FD.TYPE_STRING, "string"), (FD.TYPE_BYTES, "bytes"),
                                        (FD.TYPE_MESSAGE, "message")])
def test_rejects_repeated_non_scalar(ftype, kind):
    f = make_file()
    add_message(f, "S", ("a", 1, FD.TYPE_INT32))
    m = add_message(f, "M")
    r = m.field.add(name="r", number=3, type=ftype, label=REPEATED)
    if ftype == FD.TYPE_MESSAGE:
        r.type_name = f".{f.package}.S"
    with pytest.raises(SchemaError, match=rf"field t\d+\.M\.r is a repeated {kind}"):
        schema_of(f)


def test_rejects_recursion():
    f = make_file()
    p = f".{f.package}"
    add_message(f, "M", ("a", 1, FD.TYPE_MESSAGE, OPTIONAL, f"{p}.N"))
    add_message(f, "N", ("b", 1, FD.TYPE_MESSAGE, OPTIONAL, f"{p}.M"))
    with pytest.raises(SchemaError, match=r"field t\d+\.N\.b makes t\d+\.M recursive"):
        schema_of(f)
    f = make_file()
    add_message(f, "M", ("me", 7, FD.TYPE_MESSAGE, OPTIONAL, f".{f.package}.M"))
    with pytest.raises(SchemaError, match=r"field t\d+\.M\.me makes t\d+\.M recursive"):
        schema_of(f)


def test_depth_limit():
    def chain(levels):
        f = make_file()
        p = f".{f.package}"
        for i in range(levels):
            add_message(f, f"L{i}", ("x", 1, FD.TYPE_INT32),
                        ("n", 2, FD.TYPE_MESSAGE, OPTIONAL, f"{p}.L{i + 1}"))
        add_message(f, f"L{levels}", ("x", 1, FD.TYPE_INT32))
        return schema_of(f, "L0")

    s = chain(MAX_DEPTH)
    assert s.table(1, 1).depth == MAX_DEPTH
    check_layout(s, 3, 2)
    with pytest.raises(SchemaError, match=rf"field t\d+\.L{MAX_DEPTH}\.n nests messages "
                                          rf"{MAX_DEPTH + 1} levels below"):
        chain(MAX_DEPTH + 1)


def test_rejects_present_in_nested():
    f = make_file()
    add_message(f, "S", ("present", 1, FD.TYPE_BOOL))
    add_message(f, "M", ("s", 1, FD.TYPE_MESSAGE, OPTIONAL, f".{f.package}.S"))
    with pytest.raises(SchemaError, match=r"field t\d+\.S\.present: 'present' is the name"):
        schema_of(f)
    assert schema_of(f, "S").table(1, 1).fields[0].name == "present"  # fine at the top


def test_limits():
    s = ps.load("small")
    for bad in [0, -1, 0x10000, 1.5, True, "8"]:
        with pytest.raises(SchemaError, match="max_bytes must be"):
            s.table(bad, 1)
        with pytest.raises(SchemaError, match="max_repeat must be"):
            s.dtype(1, bad)


# -- records -----------------------------------------------------------------------------------


def test_records_small():
    s = ps.load("small")
    cls = s.message_class
    m = cls(id=2**64 - 1, kind=-5, delta=-(2**63), flag=True, crc=7, score=-0.0, name="héllo",
            payload=b"\x00\xff", tags=[1, 2**32 - 1], ratio=1.5, color=3)
    m.inner.host = "x"
    empty_inner = cls()
    empty_inner.inner.SetInParent()
    recs = s.to_records([m, cls(), empty_inner], 8, 2)
    assert recs.dtype == s.dtype(8, 2) and recs.shape == (3,)
    r = recs[0]
    assert (r["id"], r["kind"], r["delta"], r["crc"]) == (2**64 - 1, -5, -(2**63), 7)
    assert r["name"]["len"] == 6 and bytes(r["name"]["data"]) == "héllo".encode() + b"\0\0"
    assert r["tags"]["count"] == 2 and list(r["tags"]["items"]) == [1, 2**32 - 1]
    assert r["inner"]["present"] == 1 and r["inner"]["host"]["len"] == 1
    assert np.signbit(r["score"])
    assert recs[1].tobytes() == bytes(s.table(8, 2).record_size)
    assert recs[2]["inner"]["present"] == 1 and not recs[2]["inner"]["host"]["len"]
    back = s.to_messages(recs, 8, 2)
    assert back == [m, cls(), empty_inner]
    assert back[2].HasField("inner") and not back[1].HasField("inner")
    assert np.signbit(back[0].score)
    assert s.to_messages(recs.tobytes(), 8, 2) == back  # bytes work as well


def test_records_limits():
    s = ps.load("small")
    cls = s.message_class
    with pytest.raises(SchemaError, match=r"message 1: field name: a string of 5 bytes is over "
                                          r"max_bytes \(4\)"):
        s.to_records([cls(), cls(name="ééa")], 4, 4)
    with pytest.raises(ValueError, match=r"message 0: field payload: a bytes value of 5"):
        s.to_records([cls(payload=b"12345")], 4, 4)
    m = cls()
    m.inner.deltas.extend([1, 2, 3])
    with pytest.raises(ValueError, match=r"message 0: field inner.deltas: 3 values are more "
                                         r"than max_repeat \(2\)"):
        s.to_records([m], 4, 2)
    with pytest.raises(TypeError, match="is not a offload.bench.Small"):
        s.to_records([ps.load("blob").message_class()], 4, 2)


def test_to_messages_errors():
    s = ps.load("small")
    good = s.to_records([s.message_class()] * 2, 4, 2)
    bad = good.copy()
    bad[1]["name"]["len"] = 2
    bad[1]["name"]["data"][:2] = [0xC3, 0x28]
    with pytest.raises(ValueError, match="record 1: field name: the string is not valid UTF-8"):
        s.to_messages(bad, 4, 2)
    bad = good.copy()
    bad[0]["inner"]["present"] = 1
    bad[0]["inner"]["host"]["len"] = 5
    with pytest.raises(ValueError, match=r"record 0: field inner.host: len 5 is over max_bytes"):
        s.to_messages(bad, 4, 2)
    bad = good.copy()
    bad[0]["tags"]["count"] = 3
    with pytest.raises(ValueError, match=r"record 0: field tags: count 3 is over max_repeat"):
        s.to_messages(bad, 4, 2)
    with pytest.raises(ValueError, match="not a whole number"):
        s.to_messages(good.tobytes()[:-1], 4, 2)
    with pytest.raises(TypeError, match="records of dtype"):
        s.to_messages(good, 5, 2)
    raw = bytearray(good.tobytes())
    raw[s.table(4, 2).fields[3].offset] = 7  # flag: any non-zero byte is true
    assert s.to_messages(bytes(raw), 4, 2)[0].flag is True


# -- random schemas and messages ---------------------------------------------------------------

_SETTINGS = settings(max_examples=100, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SETTINGS
@given(ps.schemas(max_depth=MAX_DEPTH), st.integers(1, 300), st.integers(1, 40))
def test_layout_random(schema, max_bytes, max_repeat):
    check_layout(schema, max_bytes, max_repeat)


@_SETTINGS
@given(st.data(), ps.schemas(), st.integers(1, 12), st.integers(1, 5))
def test_round_trip(data, schema, max_bytes, max_repeat):
    msgs = data.draw(st.lists(ps.messages(schema, max_bytes, max_repeat), max_size=4))
    recs = schema.to_records(msgs, max_bytes, max_repeat)
    back = schema.to_messages(recs, max_bytes, max_repeat)
    assert back == msgs
    assert [m.SerializeToString() for m in back] == [m.SerializeToString() for m in msgs]
    again = schema.to_records(back, max_bytes, max_repeat)
    assert again.tobytes() == recs.tobytes()  # canonical
    if recs.itemsize:  # records of a message with no fields are no bytes: give the array
        assert schema.to_messages(recs.tobytes(), max_bytes, max_repeat) == msgs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ps.schemas(max_depth=MAX_DEPTH))
def test_proto_text_round_trip(tmp_path_factory, schema):
    path = tmp_path_factory.mktemp("proto") / "schema.proto"
    path.write_text(ps.proto_text(schema))
    again = ps.load(f"{path}:{schema.name}")
    assert again.hash == schema.hash and again is not schema


def test_proto_text_builtin(tmp_path):
    small = ps.load("small")
    path = tmp_path / "bench.proto"
    path.write_text(ps.proto_text(small))
    assert ps.load(f"{path}:offload.bench.Small").hash == small.hash
