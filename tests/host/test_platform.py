"""The kernel platform on the host: operations, batches, long responses, KernelError, state,
reset and parameters, through the link driver against the Python device model."""

from __future__ import annotations

import random

import pytest

from hdl.link import protocol as p
from offload import DeviceError, KernelError, OffloadError, kernels
from offload.device import Device
from offload.kernels import KernelSpec, Operation, Param, ParamError, Response
from offload.link.driver import LinkBackend

from .device_model import DeviceModel, ModelTransport

TALLY_ID = 251


class TallyModel:
    """``echo``: the message back (error if it starts with 0xEE); ``count``: how many messages
    since reset, as ``depth`` bytes."""

    def __init__(self, params):
        self.depth = params["depth"]
        self.seen = 0

    def run(self, op, request):
        self.seen += 1
        if op == "echo":
            return Response(request, request[:1] == b"\xee")
        return Response(self.seen.to_bytes(self.depth, "little"))

    def reset(self):
        self.seen = 0


def _echo_encode(params, data):
    return [bytes(d) for d in data] if isinstance(data, list) else [bytes(data)]


def _echo_decode(params, responses, data):
    return responses if isinstance(data, list) else responses[0]


TALLY = KernelSpec(
    name="tally", id=TALLY_ID, version=1, summary="test kernel",
    gateware="nowhere:Nothing", model=TallyModel, stateful=True,
    operations=(
        Operation("echo", _echo_encode, _echo_decode, max_response=lambda params, n: n,
                  error=lambda params, response, data: "starts with 0xEE", expansion=1.0),
        Operation("count", lambda params: [b""],
                  lambda params, responses: int.from_bytes(responses[0], "little"),
                  max_response=lambda params, n: params["depth"]),
    ),
    params={"depth": Param(4, "bytes of the count", low=1, high=8)},
    workload=lambda params, size, rng: ("echo", (rng.randbytes(size),)),
    strategies=lambda params: {},
)


@pytest.fixture
def tally(monkeypatch):
    monkeypatch.setattr(kernels, "KERNELS", (*kernels.KERNELS, TALLY))
    return TALLY


def tally_device(max_response=64, depth=4, fallback="never", params=None):
    models = {}

    def run(op, message):
        model = models.setdefault("m", TallyModel({"depth": depth}))
        return model.run(TALLY.operations[op].name, message)

    model = DeviceModel({TALLY_ID: ("tally", run)}, ops={TALLY_ID: 2},
                        max_response=max_response, max_payload=256,
                        params={TALLY_ID: {"depth": depth}})
    backend = LinkBackend(ModelTransport(model), timeout=0.05)
    original_reset = model.execute

    def execute(frame):
        if frame.kernel == TALLY_ID and frame.op == p.OP_RESET and "m" in models:
            models["m"].reset()
        return original_reset(frame)

    model.execute = execute
    return Device("model", backend, fallback=fallback, params=params), model


def test_long_responses_come_back_whole_through_continuations(tally):
    device, model = tally_device(max_response=64)
    rng = random.Random(1)
    for size in (0, 1, 63, 64, 65, 1000, 5000):
        data = rng.randbytes(size)
        assert device.tally.echo(data) == data
    batch = [rng.randbytes(rng.randrange(0, 300)) for _ in range(10)]
    assert device.tally.echo(batch) == batch  # ten messages, pipelined in one exchange
    assert device.backend.counters()["payload_bytes_in"] == 6193 + sum(map(len, batch))


def test_kernel_error_is_the_same_result_everywhere_and_never_falls_back(tally):
    device, _ = tally_device(fallback="auto")
    cpu = Device("cpu")
    with pytest.raises(KernelError) as on_device:
        device.tally.echo(b"\xeebad")
    with pytest.raises(KernelError) as on_cpu:
        cpu.tally.echo(b"\xeebad")
    assert on_device.value == on_cpu.value
    assert str(on_device.value) == "tally.echo: starts with 0xEE"
    stats = device.stats()["kernels"]["tally"]
    assert stats["kernel_errors"] == 1 and stats["fallback"] == 0 and stats["errors"] == 0
    assert device.backend.ready  # not a failure of the link


def test_state_is_per_device_and_reset_exactly_once(tally):
    device, model = tally_device()
    cpu = Device("cpu")
    for _ in range(3):
        device.tally.echo(b"x")
        cpu.tally.echo(b"x")
    assert device.tally.count() == cpu.tally.count() == 4
    assert Device("cpu").tally.count() == 1  # another device, its own state
    device.reset("tally")
    cpu.reset("tally")
    assert device.tally.count() == cpu.tally.count() == 1
    assert model.resets == [TALLY_ID]


def test_a_stateful_kernel_never_falls_back(tally):
    device, _ = tally_device(fallback="auto")
    assert device.tally.count() == 1
    device.backend.transport.closed = True  # the board is gone
    device.backend.transport.reopen = lambda: (_ for _ in ()).throw(DeviceError("refused"))
    with pytest.raises(DeviceError, match="stateful kernel never runs on the CPU"):
        device.tally.count()
    assert device.stats()["kernels"]["tally"]["fallback"] == 0


def test_operations_and_opcodes(tally):
    device, _ = tally_device()
    with pytest.raises(TypeError, match="has operations echo, count"):
        device.tally(b"x")  # two operations: name one
    assert [o.name for o in kernels.get("tally").operations] == ["echo", "count"]
    frame = device.backend.exchange(TALLY_ID, [(7, 0, b"x")])[0]
    assert frame.op == p.STATUS_BAD_OPCODE
    with pytest.raises(AttributeError, match="no operation 'nope'"):
        device.tally.nope()


def test_parameters_are_checked_and_must_match_the_device(tally):
    with pytest.raises(ParamError, match="depth must be from 1 to 8"):
        Device("cpu", params={"tally": {"depth": 9}})
    with pytest.raises(ParamError, match="no parameter colour"):
        Device("cpu", params={"tally": {"colour": 1}})
    assert Device("cpu", params={"tally": {"depth": 2}}).params("tally") == {"depth": 2}
    with pytest.raises(DeviceError, match=r"built with \{'depth': 4\}, not the \{'depth': 2\}"):
        tally_device(depth=4, params={"tally": {"depth": 2}})
    device, _ = tally_device(depth=2)
    assert device.params("tally") == {"depth": 2}  # the device's own, from its manifest
    assert isinstance(ParamError("x"), OffloadError)


def test_crc32c_batches_and_its_one_operation():
    model = DeviceModel({1: ("crc32c", lambda m: kernels.get("crc32c").cpu(m).to_bytes(4,
                                                                                   "little"))})
    device = Device("model", LinkBackend(ModelTransport(model)), fallback="never")
    data = [b"", b"123456789", bytes(3000)]
    assert device.crc32c(data) == [kernels.get("crc32c").cpu(d) for d in data]
    assert device.crc32c.call(b"123456789") == device.crc32c(b"123456789") == 0xE3069283
    assert [m for _, m in model.executed] == [*data, b"123456789", b"123456789"]
