"""The protobuf kernel on virtual boards built for random schemas, against Google's library.

Each schema hypothesis draws (random field numbers, types, labels, nesting) becomes a device of
its own: the gateware is generated from the schema's field table and run under Verilator
behind the link. On it, and on the CPU path:

* ``encode`` of random messages equals ``SerializeToString()`` of each;
* ``decode`` of their serializations equals ``ParseFromString()`` (as message objects, and as
  records);
* malformed input is a :class:`~offload.KernelError` with the same text on both, and the next
  call is answered.

Both widths of the kernel: 1 byte a beat (the byte-a-cycle engines) and 8 (the wide encoder).
A few schemas by default (each a Verilator build of a minute or so); more with ``--slow``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import offload
from offload.errors import KernelError
from offload.kernels import protobuf_schema as ps
from sim.toolchain import ToolchainError

MAX_BYTES, MAX_REPEAT = 6, 3


def _examples(config) -> int:
    return 3 if config.getoption("--slow") else 1


def _params(schema, width: int = 1) -> dict:
    return {"protobuf": {"schema": schema, "max_bytes": MAX_BYTES, "max_repeat": MAX_REPEAT,
                         "width": width}}


def _open(schema, kernels=("protobuf",), width: int = 1):
    params = _params(schema, width)
    try:
        return offload.open("sim", fallback="never", kernels=list(kernels), params=params)
    except ToolchainError as exc:
        pytest.skip(f"the virtual board needs Verilator: {exc}")


def outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except KernelError as exc:
        return exc


def _check_schema(schema, data, width: int = 1, board=None) -> None:
    """``board``: a virtual board already open for ``schema`` (else one is opened here)."""
    msgs = data.draw(st.lists(ps.messages(schema, MAX_BYTES, MAX_REPEAT), min_size=1,
                              max_size=6), label="messages")
    wire = [m.SerializeToString() for m in msgs]
    params = _params(schema, width)
    with contextlib.ExitStack() as stack:
        cpu = stack.enter_context(offload.open("cpu", params=params))
        dev = board if board is not None else stack.enter_context(_open(schema, width=width))
        assert dev.gateware_kernels == {"protobuf"}
        for device in (cpu, dev):
            assert device.protobuf.encode(msgs) == wire
            back = device.protobuf.decode(wire, messages=True)
            assert [m.SerializeToString() for m in back] == wire
            assert back == [schema.message_class.FromString(w) for w in wire]
            records = device.protobuf.decode(wire)
            assert records.tobytes() == schema.to_records(msgs, MAX_BYTES, MAX_REPEAT).tobytes()
            assert device.protobuf.encode(records) == wire
        # Malformed input: a message cut short, and field number 0; then a good call.
        for bad in ([wire[0] + b"\x0a\x05ab"], [b"\x00\x01"]):
            on_cpu, on_dev = outcome(cpu.protobuf.decode, bad), outcome(dev.protobuf.decode, bad)
            assert isinstance(on_dev, KernelError), on_dev
            assert str(on_dev) == str(on_cpu)
            assert dev.protobuf.encode(msgs) == wire


def test_the_bytes_heavy_schema_on_a_wide_virtual_board():
    # (Small at width 8 is on the board of the malformed-input tests below.)
    schema = ps.load("blob")

    @settings(max_examples=3, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data):
        _check_schema(schema, data, width=8, board=board)

    # One board for every example: the schema is the same, and the kernel keeps no state.
    with _open(schema, width=8) as board:
        run()


@pytest.mark.parametrize("width", [1, 8])
def test_random_schemas_on_virtual_boards(pytestconfig, width):
    @settings(max_examples=_examples(pytestconfig), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(ps.schemas(max_depth=2, max_fields=6).filter(
        lambda s: s.table(MAX_BYTES, MAX_REPEAT).record_size > 0), st.data())
    def run(schema, data):
        _check_schema(schema, data, width)

    run()


def test_a_device_built_for_another_schema_is_a_clear_error():
    from offload.gateware import device_design

    # The board of the bytes-heavy test above (Blob at width 8): its build, from the cache.
    design = device_design("icebreaker", ["protobuf"], params=_params(ps.load("blob"), 8))
    try:
        board = design.virtual_board().start()
    except ToolchainError as exc:
        pytest.skip(f"the virtual board needs Verilator: {exc}")
    try:
        with pytest.raises(offload.DeviceError, match="protobuf .*schema"):
            offload.open(board.url, params={"protobuf": {"schema": "small"}})
        # Asked for the schema it has, the same board answers.
        with offload.open(board.url, params={"protobuf": {"schema": "blob"}}) as dev:
            msg = ps.load("blob").message_class(seq=7)
            assert dev.protobuf.encode([msg]) == [msg.SerializeToString()]
    finally:
        board.stop()


@pytest.fixture(scope="module", params=[1, 8], ids=["width1", "width8"])
def small_board(request):
    """A virtual board with the protobuf kernel for the builtin ``small`` schema, 32 / 8, at
    each width.

    At width 1 these are the iCEBreaker's defaults, and the board is the HIL suite's (every
    registered kernel, each at its defaults), so that its build is taken from the cache."""
    from offload import kernels

    params = {"protobuf": {"schema": "small", "max_bytes": 32, "max_repeat": 8,
                           "width": request.param}}
    names = [spec.name for spec in kernels.KERNELS] if request.param == 1 else ["protobuf"]
    try:
        dev = offload.open("sim:icebreaker", fallback="never", kernels=names, params=params)
    except ToolchainError as exc:
        pytest.skip(f"the virtual board needs Verilator: {exc}")
    with dev, offload.open("cpu", params=params) as cpu:
        yield dev, cpu


def test_every_malformed_message_is_the_same_kernel_error_on_a_board(small_board, fault_tally):
    """Each malformed-input class (the handcrafted bodies of ``test_protobuf``), between two
    good messages: the same KernelError text on the board as on the CPU, and the next call is
    answered."""
    from .test_protobuf import BAD_DECODE, GOOD

    dev, cpu = small_board
    good = dev.protobuf.decode([GOOD])
    for body, _, text in BAD_DECODE:
        on_dev = outcome(dev.protobuf.decode, [GOOD, body, GOOD])
        on_cpu = outcome(cpu.protobuf.decode, [GOOD, body, GOOD])
        assert isinstance(on_dev, KernelError), (body, on_dev)
        assert str(on_dev) == str(on_cpu) and text in str(on_dev)
        fault_tally["kernel errors"] = fault_tally.get("kernel errors", 0) + 1
        assert dev.protobuf.decode([GOOD]).tobytes() == good.tobytes()
        fault_tally["good calls after"] = fault_tally.get("good calls after", 0) + 1
    stats = dev.stats()
    assert stats["fallbacks"] == 0 and stats["errors"] == 0
    assert stats["kernels"]["protobuf"]["kernel_errors"] >= len(BAD_DECODE)


def test_every_malformed_record_is_the_same_kernel_error_on_a_board(small_board):
    from .test_protobuf import record

    dev, cpu = small_board
    table = ps.load("small").table(32, 8)
    offset = {f.name: f.offset for f in table.fields}
    good = record(id=3, name="x", inner={"host": "h"})
    wire = dev.protobuf.encode(good)
    for where, value in ((offset["name"], b"\x21\x00"), (offset["name"], b"\x02\x00\xc0\x80"),
                         (offset["tags"], b"\x09\x00"), (offset["host"], b"\x01\x00\xff"),
                         (offset["deltas"], b"\x10\x00")):
        bad = good.copy()
        bad.view("u1")[where:where + len(value)] = list(value)
        batch = np.concatenate([good, bad, good])
        on_dev, on_cpu = outcome(dev.protobuf.encode, batch), outcome(cpu.protobuf.encode, batch)
        assert isinstance(on_dev, KernelError) and str(on_dev) == str(on_cpu)
        assert dev.protobuf.encode(good) == wire
    # A bad field in a message that is not present is not encoded, so not an error.
    absent = good.copy()
    absent["inner"]["present"] = 0
    absent.view("u1")[offset["host"]:offset["host"] + 3] = [1, 0, 0xFF]
    assert dev.protobuf.encode(absent) == cpu.protobuf.encode(absent)
