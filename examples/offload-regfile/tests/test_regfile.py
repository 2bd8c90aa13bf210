"""The regfile kernel: its CPU model, its codec, and its gateware against the model.

* the model: writes, reads, old values, out-of-range indices, partial records, reset;
* the model against an independent, plain-dict register file written here (differential);
* the codec: what calls accept and what they refuse;
* the gateware in Amaranth's simulator against the model, with random messages of both
  operations under random idle gaps and backpressure; its throughput, the holdback it declares,
  and its clearing after a reset;
* the gateware under Verilator through cocotb (``cocotb_regfile.py``), with offload's shared
  stream models, skipped where Verilator or offload's test helpers are missing.
"""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import numpy as np
import offload  # first: it loads the plug-ins (this one too, if installed)
import pytest
from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st
from offload import KernelError
from offload.kernels import Response

from offload_regfile import ANSWER, RECORD, SPEC, RegfileModel
from offload_regfile.gateware import RegfileKernel

PARAMS = {"slots": 256}
OPCODE = {name: number for number, name in enumerate(RegfileKernel.operations)}


def call(model, op, *args):
    """A call through the codec on ``model``, as a device makes it."""
    return SPEC.run_on_model(model, SPEC.operation(op), model_params(model), args, {})


def model_params(model):
    return {"slots": model.slots}


def write_request(*records):
    return b"".join(struct.pack("<HI", i, v) for i, v in records)


def read_request(*indices):
    return b"".join(struct.pack("<H", i) for i in indices)


def answers(data):
    return [struct.unpack_from("<HI", data, k) for k in range(0, len(data), ANSWER)]


# -- the CPU model ---------------------------------------------------------------------------

def test_write_answers_old_values_and_read_sees_writes():
    model = RegfileModel(PARAMS)
    assert call(model, "write", 3, 0xDEADBEEF) == 0
    assert call(model, "write", 3, 7) == 0xDEADBEEF
    assert call(model, "read", 3) == 7
    # Within one message, records take effect in order.
    assert call(model, "write", [(5, 1), (5, 2), (6, 3), (5, 4)]) == [0, 1, 0, 2]
    assert call(model, "read", [5, 6, 3, 0, 255]) == [4, 3, 7, 0, 0]
    assert call(model, "write", []) == [] and call(model, "read", []) == []


def test_raw_responses():
    model = RegfileModel(PARAMS)
    response = model.run("write", write_request((1, 10), (2, 20)))
    assert answers(response.data) == [(1, 0), (2, 0)] and not response.error
    response = model.run("read", read_request(2, 1))
    assert answers(response.data) == [(2, 20), (1, 10)] and not response.error
    assert model.run("read", b"") == model.run("write", b"") == Response(b"")


def test_out_of_range_index():
    model = RegfileModel(PARAMS)
    response = model.run("write", write_request((1, 5), (256, 9), (2, 6), (300, 1)))
    assert answers(response.data) == [(1, 0), (256, 0), (2, 0), (300, 0)] and response.error
    assert model.run("read", read_request(1, 2, 256)).data == write_request((1, 5), (2, 6),
                                                                            (256, 0))
    assert not model.registers[256:].size  # nothing beyond the slots, nothing written there
    with pytest.raises(KernelError, match=r"^regfile\.write: index 256 out of range for 256 "
                                          "registers$"):
        call(model, "write", [(1, 1), (256, 2), (999, 3)])
    assert call(model, "read", 1) == 1  # the records before and after it did run
    with pytest.raises(KernelError, match="index 65535 out of range for 256 registers"):
        call(model, "read", [0, 65535])


@pytest.mark.parametrize("op, request_, whole", [
    ("write", write_request((1, 2)) + b"\x07\x00\x01", 6),
    ("write", b"\x01", 0),
    ("read", read_request(1, 2) + b"\x01", 4),
])
def test_partial_record_is_ignored_and_flagged(op, request_, whole):
    model = RegfileModel(PARAMS)
    response = model.run(op, request_)
    assert response.error
    assert len(response.data) == ANSWER * (whole // RECORD[op])
    assert not model.registers[7]  # the partial write record wrote nothing


def test_error_texts():
    error = SPEC.operation("read").error
    assert error(PARAMS, None, [1, 999, 1000]) == "index 999 out of range for 256 registers"
    # The codec never sends a partial record; with one that passes raw bytes through, the
    # text is made from the request that has one.
    from offload_regfile import _error

    text = _error("write", lambda params, data: [data])(PARAMS, None, b"\x00" * 13)
    assert text == "a message of 13 bytes is not a whole number of 6-byte records"


def test_reset_clears_every_register():
    model = RegfileModel({"slots": 17})
    call(model, "write", [(i, i + 100) for i in range(17)])
    model.reset()
    assert call(model, "read", list(range(17))) == [0] * 17


def test_unknown_operation_is_flagged():
    assert RegfileModel(PARAMS).run("nonesuch", b"\x01\x02") == Response(b"", error=True)


# -- the model against a plain-dict register file --------------------------------------------

class DictRegisters:
    """A register file as the documentation describes it, one record at a time, in a dict."""

    def __init__(self, slots):
        self.slots, self.values = slots, {}

    def run(self, op, request):
        size = 6 if op == "write" else 2
        out, error = [], len(request) % size != 0
        for start in range(0, len(request) - size + 1, size):
            index = request[start] | request[start + 1] << 8
            if index >= self.slots:
                out.append((index, 0))
                error = True
                continue
            out.append((index, self.values.get(index, 0)))
            if op == "write":
                self.values[index] = int.from_bytes(request[start + 2:start + 6], "little")
        return b"".join(struct.pack("<HI", i, v) for i, v in out), error


def raw_message(slots):
    index = st.one_of(st.integers(0, 3), st.integers(0, slots - 1), st.integers(0, 0xFFFF))
    write = st.lists(st.tuples(index, st.integers(0, 2**32 - 1)), max_size=12).map(
        lambda r: write_request(*r))
    read = st.lists(index, max_size=12).map(lambda r: read_request(*r))
    tail = st.binary(max_size=5)
    return st.one_of(
        st.tuples(st.just("write"), write, st.just(b"")),
        st.tuples(st.just("read"), read, st.just(b"")),
        st.tuples(st.sampled_from(["write", "read"]), st.one_of(write, read), tail),
    ).map(lambda t: (t[0], t[1] + t[2]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 5, 256]).flatmap(
    lambda slots: st.tuples(st.just(slots), st.lists(raw_message(slots), max_size=12))))
def test_model_matches_dict_registers(case):
    slots, messages = case
    model, reference = RegfileModel({"slots": slots}), DictRegisters(slots)
    for op, message in messages:
        response = model.run(op, message)
        assert (response.data, response.error) == reference.run(op, message)


# -- the codec -------------------------------------------------------------------------------

def test_codec_accepts_numpy():
    model = RegfileModel(PARAMS)
    records = np.zeros(4, dtype=[("index", np.int64), ("value", np.uint64)])
    records["index"] = [1, 2, 3, 1]
    records["value"] = [10, 20, 30, 2**32 - 1]
    old = call(model, "write", records)
    assert isinstance(old, np.ndarray) and old.dtype == np.uint32
    assert old.tolist() == [0, 0, 0, 10]
    values = call(model, "read", np.array([1, 2, 3], dtype=np.uint16))
    assert isinstance(values, np.ndarray) and values.tolist() == [2**32 - 1, 20, 30]
    assert call(model, "write", np.int32(4), np.uint64(5)) == 0


@pytest.mark.parametrize("args, error, match", [
    ((1.0, 2), TypeError, "index must be an integer"),
    ((1, "2"), TypeError, "value must be an integer"),
    ((True, 2), TypeError, "index must be an integer"),
    ((-1, 2), ValueError, "index must be from 0 to 65535, not -1"),
    ((65536, 2), ValueError, "index must be from 0 to 65535"),
    ((1, 2**32), ValueError, "value must be from 0 to 4294967295"),
    ((1,), TypeError, "takes an index and a value"),
    (([(1, 2), (3,)],), TypeError, "record 1 must be an"),
    (([(1, 2), (3, -4)],), ValueError, r"value \(record 1\) must be from 0"),
    ((np.zeros(2, dtype=np.uint32),), TypeError, "fields index and value"),
    ((np.zeros(2, dtype=[("index", "f8"), ("value", "u4")]),), TypeError, "integers"),
    ((np.array([(70000, 1)], dtype=[("index", "i4"), ("value", "u4")]),), ValueError,
     "holds 70000 to 70000"),
])
def test_write_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        SPEC.operation("write").encode(PARAMS, *args)


@pytest.mark.parametrize("arg, error, match", [
    ("1", TypeError, "must be an integer"),
    ([1, None], TypeError, "must be an integer"),
    (70000, ValueError, "from 0 to 65535"),
    (np.array([-1]), ValueError, "from 0 to 65535"),
    (np.zeros((2, 2), dtype=int), TypeError, "1-D"),
])
def test_read_refuses_bad_arguments(arg, error, match):
    with pytest.raises(error, match=match):
        SPEC.operation("read").encode(PARAMS, arg)


def test_index_beyond_slots_is_the_kernels_error_not_the_codecs():
    # The codec cannot know the device's slots for sure; the kernel decides, on every device.
    assert SPEC.operation("read").encode({"slots": 4}, 4) == [read_request(4)]


def test_decode_refuses_answers_the_kernel_cannot_give():
    with pytest.raises(ValueError, match="answered 5 bytes"):
        SPEC.operation("read").decode(PARAMS, [b"\x00" * 5], 1)
    with pytest.raises(ValueError, match="other registers"):
        SPEC.operation("read").decode(PARAMS, [write_request((2, 0))], 1)


def test_declared_sizes():
    write, read = SPEC.operation("write"), SPEC.operation("read")
    assert (SPEC.opcode(write), SPEC.opcode(read)) == (0, 1)
    assert write.max_response(PARAMS, 600) == 600 and write.max_response(PARAMS, 5) == 0
    assert read.max_response(PARAMS, 100) == 300 and read.max_response(PARAMS, 3) == 6
    assert (write.expansion, read.expansion) == (1.0, 3.0)


def test_workload_and_strategies():
    op, (records,) = SPEC.workload(PARAMS, 4096, random.Random(1))
    assert op == "write" and len(records) == 4096 // 6
    assert all(0 <= i < 256 for i, _ in records)
    strategies = SPEC.strategies(PARAMS)
    assert set(strategies) == {"write", "read"}
    model = RegfileModel(PARAMS)

    @settings(max_examples=200, deadline=None)
    @given(strategies["write"], strategies["read"])
    def check(write_args, read_args):
        for op, args in (("write", write_args), ("read", read_args)):
            try:
                call(model, op, *args)
            except KernelError as exc:
                outcomes.add(exc.detail.split()[0])
            else:
                outcomes.add("ok")

    outcomes: set[str] = set()
    check()
    assert outcomes == {"ok", "index"}  # some calls are out of range, most are not


# -- the gateware in Amaranth's simulator ----------------------------------------------------

def beats(opcode, message, empty_tail=False):
    """The request beats of a message: a byte each, then (or only) an empty last beat."""
    out = [dict(data=b, nbytes=1, last=False, op=opcode) for b in message]
    if out and not empty_tail:
        out[-1]["last"] = True
    else:
        out.append(dict(data=0, nbytes=0, last=True, op=opcode))
    return out


def simulate(slots, messages, *, seed=0, idle=0.3, backpressure=0.3, expansion=None,
             reset_after=None):
    """Run ``messages`` (``(opcode, bytes, empty_tail)``) through the kernel in Amaranth's
    simulator; return the responses ``(bytes, error)`` and figures of the run.

    ``reset_after``: pulse the kernel's reset once the first this many messages are answered
    and then half of the next one has been sent with the output held; the responses before the
    reset are returned, then those of the messages after the half-sent one.
    """
    dut = RegfileKernel(slots)
    top = Module()
    rst = Signal()
    top.submodules.dut = ResetInserter(rst)(dut)
    rng = random.Random(seed)
    responses = []
    figures = {"cycles": 0, "stalls": 0, "accepted": [], "sent": [], "owed": 0, "max_owed": 0,
               "reset_ready_low": 0}
    resetting = {"half_sent": False, "done": False}

    async def source(ctx):
        for number, (opcode, message, empty_tail) in enumerate(messages):
            if reset_after is not None and number == reset_after:
                while len(responses) < reset_after:
                    await ctx.tick()
                for beat in beats(opcode, message)[:len(message) // 2]:
                    ctx.set(dut.i_stream.valid, 1)
                    ctx.set(dut.i_stream.payload, {**beat, "error": 0})
                    await ctx.tick().until(dut.i_stream.ready)
                ctx.set(dut.i_stream.valid, 0)
                resetting["half_sent"] = True
                while not resetting["done"]:
                    await ctx.tick()
                continue
            for beat in beats(opcode, message, empty_tail):
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, {**beat, "error": 0})
                await ctx.tick().until(dut.i_stream.ready)
                ctx.set(dut.i_stream.valid, 0)

    async def sink(ctx):
        wanted = len(messages) - (reset_after is not None)
        data = b""
        while len(responses) < wanted:
            if resetting["half_sent"] and not resetting["done"]:
                # Hold the output (an answer is in flight), reset, and drop what came of it.
                ctx.set(dut.o_stream.ready, 0)
                await ctx.tick().repeat(3)
                ctx.set(rst, 1)
                await ctx.tick()
                ctx.set(rst, 0)
                data = b""
                low = 0
                while not ctx.get(dut.i_stream.ready):
                    await ctx.tick()
                    low += 1
                figures["reset_ready_low"] = low
                resetting["done"] = True
            if rng.random() < backpressure:
                ctx.set(dut.o_stream.ready, 0)
                await ctx.tick()
                continue
            ctx.set(dut.o_stream.ready, 1)
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload)
            if not valid:
                continue
            data += bytes([int(payload.data)])[:int(payload.nbytes)]
            if payload.last:
                responses.append((data, bool(payload.error)))
                data = b""

    async def monitor(ctx):
        taken = 0
        async for _, _, iv, ir, ipl, ov, orr, opl in ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.i_stream.payload,
                dut.o_stream.valid, dut.o_stream.ready, dut.o_stream.payload):
            figures["cycles"] += 1
            if iv and ir:
                figures["accepted"].append(figures["cycles"])
                if not ipl.last or ipl.nbytes:
                    taken += 1
                    if expansion is not None:
                        figures["owed"] += expansion
            elif iv:
                figures["stalls"] += 1
            if ov and orr:
                figures["sent"].append(figures["cycles"])
                figures["owed"] -= opl.nbytes
            figures["max_owed"] = max(figures["max_owed"], figures["owed"])

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return responses, figures


def random_messages(rng, slots, count, *, ops=("write", "read"), malformed=True):
    messages = []
    for _ in range(count):
        op = rng.choice(ops)
        n = rng.choice([0, 1, 2, rng.randint(0, 20)])

        def index():
            return rng.choice([rng.randrange(4), rng.randrange(slots), rng.randrange(slots),
                               rng.randrange(65536)])

        if op == "write":
            message = write_request(*[(index(), rng.getrandbits(32)) for _ in range(n)])
        else:
            message = read_request(*[index() for _ in range(n)])
        empty_tail = rng.random() < 0.2
        opcode = OPCODE[op]
        if malformed and rng.random() < 0.15:
            message += rng.randbytes(rng.randint(1, RECORD[op] - 1))
        if malformed and rng.random() < 0.03:
            opcode = rng.choice([2, 7, 255])
        messages.append((opcode, message, empty_tail))
    return messages


def expected(slots, messages):
    model = RegfileModel({"slots": slots})
    out = []
    for opcode, message, _ in messages:
        name = RegfileKernel.operations[opcode] if opcode < len(RECORD) else "unknown"
        response = model.run(name, message)
        out.append((response.data, response.error))
    return out


@pytest.mark.parametrize("slots, seed", [(256, 1), (5, 2), (1, 3), (100, 4)])
def test_gateware_matches_model(slots, seed):
    rng = random.Random(seed)
    messages = random_messages(rng, slots, 60)
    started = time.monotonic()
    responses, figures = simulate(slots, messages, seed=seed)
    assert len(responses) == len(messages)
    for number, (got, want) in enumerate(zip(responses, expected(slots, messages),
                                             strict=True)):
        assert got == want, f"message {number} {messages[number]!r}"
    print(f"slots={slots}: {len(messages)} messages, {figures['cycles']} cycles, "
          f"{time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("op", ["write", "read"])
def test_gateware_holdback_is_honest(op):
    """Under backpressure, the response bytes owed (``expansion`` per request byte taken, less
    those answered) never exceed the holdback the operation declares."""
    operation = SPEC.operation(op)
    rng = random.Random(10 + OPCODE[op])
    messages = random_messages(rng, 256, 30, ops=(op,), malformed=False)
    messages = [(o, m, False) for o, m, _ in messages]
    responses, figures = simulate(256, messages, seed=5, idle=0.1, backpressure=0.6,
                                  expansion=operation.expansion)
    assert responses == expected(256, messages)
    assert figures["owed"] == 0
    assert 0 < figures["max_owed"] <= operation.holdback
    print(f"{op}: owed at most {figures['max_owed']} bytes, declared {operation.holdback}")


def test_gateware_one_byte_a_cycle():
    """With no idle and no backpressure, writes go in and come out a byte every cycle."""
    rng = random.Random(20)
    messages = [(OPCODE["write"], write_request(*[(rng.randrange(256), rng.getrandbits(32))
                                                  for _ in range(30)]), False)
                for _ in range(4)]
    responses, figures = simulate(256, messages, idle=0, backpressure=0)
    assert responses == expected(256, messages)
    accepted, sent = figures["accepted"], figures["sent"]
    total = sum(len(m) for _, m, _ in messages)
    assert len(accepted) == len(sent) == total
    assert accepted[-1] - accepted[0] == total - 1, "input not taken every cycle"
    assert sent[-1] - sent[0] == total - 1, "output not sent every cycle"
    # The first answer leaves LATENCY cycles after its record's last byte.
    assert sent[0] - accepted[RECORD["write"] - 1] == RegfileKernel.LATENCY


def test_gateware_reads_stream_at_the_output_rate():
    rng = random.Random(21)
    messages = [(OPCODE["read"], read_request(*[rng.randrange(256) for _ in range(40)]), False)]
    responses, figures = simulate(256, messages, idle=0, backpressure=0)
    assert responses == expected(256, messages)
    sent = figures["sent"]
    assert sent[-1] - sent[0] == len(sent) - 1, "read answers not sent every cycle"


@pytest.mark.parametrize("slots", [256, 7])
def test_gateware_reset_clears_registers(slots):
    """A reset mid-message with an answer held: the kernel clears its registers (ready low
    meanwhile) and answers the next messages from a clean state."""
    rng = random.Random(30)
    fill = [(OPCODE["write"], write_request(*[(i, rng.getrandbits(32) | 1)
                                             for i in range(slots)]), False)]
    cut = [(OPCODE["write"], write_request(*[(i, 5) for i in range(8)]), False)]
    after = [(OPCODE["read"], read_request(*range(slots)), False),
             (OPCODE["write"], write_request((0, 9)), False)]
    responses, figures = simulate(slots, fill + cut + after, idle=0.2, backpressure=0.2,
                                  reset_after=1)
    assert responses[0] == expected(slots, fill)[0]
    assert responses[1:] == [(write_request(*[(i, 0) for i in range(slots)]), False),
                             (write_request((0, 0)), False)]
    assert figures["reset_ready_low"] >= slots


@pytest.mark.parametrize("slots, error", [(0, ValueError), (4097, ValueError),
                                          ("8", TypeError), (True, TypeError)])
def test_gateware_refuses_bad_slots(slots, error):
    with pytest.raises(error, match="slots"):
        RegfileKernel(slots)


# -- the gateware under Verilator ------------------------------------------------------------

def _offload_checkout() -> Path | None:
    # offload's shared cocotb stream models live in its test suite, not in the package: they
    # are found beside an offload source checkout (an editable install).
    root = Path(offload.__file__).resolve().parents[1]
    return root if (root / "tests" / "cocotb_streams.py").is_file() else None


@pytest.mark.parametrize("slots", [256, 100])
def test_cocotb_under_verilator(slots, tmp_path, monkeypatch):
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    from sim import toolchain
    from sim.cocotb_runner import run_cocotb

    try:
        toolchain.verilator_root()
    except toolchain.ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")
    checkout = _offload_checkout()
    if checkout is None:
        pytest.skip("offload's cocotb stream models (tests/cocotb_streams.py of an offload "
                    "source checkout) are not available")
    # The simulator's Python gets this process's sys.path: the testbench, the package, offload.
    here = Path(__file__).resolve().parent
    for folder in (checkout, here.parent, here):
        monkeypatch.syspath_prepend(str(folder))
    started = time.monotonic()
    result = run_cocotb(lambda: RegfileKernel(slots), f"regfile_s{slots}", "cocotb_regfile",
                        tmp_path, parameters={"slots": slots}, timeout_s=600)
    assert result.tests == 12 and result.skipped == 0
    print(f"cocotb slots={slots}: {result.tests} tests, {time.monotonic() - started:.1f} s, "
          f"{result.cycles_per_second(10):,.0f} cycles/s")

