"""Never a wrong answer: the host driver against the Python device model under fault schedules
that hypothesis chooses (frames lost, damaged, duplicated, held back past later frames, the
connection cut, the device restarted), and the defects this suite was written for."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdl.link import protocol as p
from offload import DeviceError, OffloadError, kernels
from offload.device import Device
from offload.link.codec import Frame, decode_frame, encode_frame
from offload.link.driver import LinkBackend

from .device_model import DeviceModel, ModelTransport

CRC = kernels.get("crc32c")
FAST = dict(timeout=0.002, retries=3, backoff=(1e-6, 1e-5))  # back-off: see its own test


def crc_model(**kwargs) -> DeviceModel:
    return DeviceModel({CRC.id: ("crc32c", lambda m: CRC.cpu(m).to_bytes(4, "little"))},
                       **kwargs)


def frames_of(data: bytes) -> list[bytes]:
    *whole, rest = data.split(b"\x00")
    assert not rest
    return [f + b"\x00" for f in whole if f]


class ScheduledTransport(ModelTransport):
    """Applies a fault schedule: ``faults[(direction, n)]`` happens to the n-th frame that
    direction carries ("up": host to device, "down": device to host).

    Kinds: drop, flip (one bit), dup, hold (delivered after the next frame in that direction;
    held requests survive a reconnect, as a stale frame somewhere in a network would), cut (the
    connection fails before the frame), restart (the device is reset before the frame)."""

    def __init__(self, model: DeviceModel, faults: dict[tuple[str, int], str], seed: int = 0):
        super().__init__(model, "scheduled")
        self.faults = faults
        self.rng = random.Random(seed)
        self.seen = {"up": 0, "down": 0}
        self.held = {"up": [], "down": []}
        self.done: list[str] = []

    def _apply(self, direction: str, frames: list[bytes]) -> list[bytes]:
        out = []
        for frame in frames:
            kind = self.faults.get((direction, self.seen[direction]))
            self.seen[direction] += 1
            if kind:
                self.done.append(kind)
            if kind == "cut":
                self.closed = True
                raise DeviceError(f"{self.name}: connection reset")
            if kind == "restart":
                self.model.restart()
            if kind == "drop":
                continue
            if kind == "flip":
                damaged = bytearray(frame)
                damaged[self.rng.randrange(len(frame) - 1)] ^= 1 << self.rng.randrange(8)
                frame = bytes(damaged)
            if kind == "hold":
                self.held[direction].append(frame)
                continue
            out.append(frame)
            if kind == "dup":
                out.append(frame)
            out += self.held[direction]
            self.held[direction] = []
        return out

    def write(self, data: bytes) -> None:
        if self.closed:
            raise DeviceError(f"{self.name}: write failed: closed")
        answers = b"".join(self.model.feed(f) for f in self._apply("up", frames_of(data)))
        if answers:
            self.inbox += b"".join(self._apply("down", frames_of(answers)))

    def reopen(self) -> None:
        super().reopen()
        self.held["down"] = []  # answers on a connection die with it


KINDS = ["drop", "flip", "dup", "hold", "cut", "restart"]
schedules = st.dictionaries(
    st.tuples(st.sampled_from(["up", "down"]), st.integers(0, 160)),
    st.sampled_from(KINDS), max_size=25)


class CallLog:
    """Which call was running when the model executed each message."""

    def __init__(self, model: DeviceModel):
        self.current = -1
        self.at: list[int] = []
        run = model.execute

        def execute(frame):
            before = len(model.executed)
            response = run(frame)
            if len(model.executed) > before:
                self.at.append(self.current)
            return response

        model.execute = execute


def run_calls(device: Device, log: CallLog, messages: list[bytes], first: int = 0,
              end: int | None = None) -> tuple[int, int]:
    """Every call's result is the CPU path's or an OffloadError: (correct, errors)."""
    correct = errors = 0
    for i, message in enumerate(messages[first:end], start=first):
        log.current = i
        try:
            result = device.crc32c(message)
        except OffloadError:
            errors += 1
            continue
        assert result == CRC.cpu(message), f"call {i} returned a wrong answer"
        correct += 1
    return correct, errors


def check_executions(model: DeviceModel, log: CallLog, messages: list[bytes]) -> None:
    # No frame ran twice while the device was up; every message the kernel ran is the message
    # of one call (or, for one that was abandoned and then ended, a prefix of it), of the call
    # that was running or of one before it: never a mix of two calls' bytes.
    for seqs in model.executed_seqs:
        assert len(seqs) == len(set(seqs))
    for (_, ran), call in zip(model.executed, log.at, strict=True):
        assert any(m.startswith(ran) for m in messages[:call + 1]), (call, len(ran))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(faults=schedules, rng=st.randoms(use_true_random=False),
       policy=st.sampled_from(["never", "auto"]))
def test_fault_schedules_never_give_a_wrong_answer(faults, rng, policy, fault_tally):
    model = crc_model(max_payload=32)
    transport = ScheduledTransport(model, faults)
    try:
        backend = LinkBackend(transport, **FAST)
    except OffloadError:
        return  # the schedule broke the opening itself: an error, never a wrong answer
    log = CallLog(model)
    device = Device("scheduled", backend, fallback=policy)
    messages = [rng.randbytes(rng.choice([0, 5, 31, 32, 33, 100, 200])) for _ in range(25)]
    correct, errors = run_calls(device, log, messages)
    assert correct + errors == len(messages)
    if policy == "auto":
        assert errors == 0  # every failure fell back to the CPU
    check_executions(model, log, messages)
    stats = device.stats()
    for key, value in (("schedules", 1), ("faults", len(transport.done)), ("correct", correct),
                       ("of them in gateware", stats["kernels"]["crc32c"]["gateware"]),
                       ("fallbacks", stats["fallbacks"]), ("errors", errors),
                       ("resyncs", backend.counters().get("resyncs", 0)),
                       ("reconnects", backend.counters().get("reconnects", 0))):
        fault_tally[key] = fault_tally.get(key, 0) + value


def test_responses_lost_past_the_retry_budget_then_the_next_call_gets_its_own_answer():
    # The first defect: after an exchange whose responses were lost for longer than the retry
    # budget, the host reused numbers the device had run and got old answers replayed.
    model = crc_model(max_payload=32)
    faults = {("down", n): "drop" for n in range(10, 40)}
    transport = ScheduledTransport(model, faults)
    backend = LinkBackend(transport, **FAST)
    device = Device("scheduled", backend, fallback="never")
    log = CallLog(model)
    messages = [bytes([65 + i]) * (4 + 40 * (i % 3)) for i in range(16)]
    correct, errors = run_calls(device, log, messages, end=12)
    assert errors >= 1, (correct, errors)
    # Past the black hole every call runs in gateware again, each with its own answer.
    assert run_calls(device, log, messages, first=12) == (4, 0)
    assert device.stats()["kernels"]["crc32c"]["errors"] == errors
    assert device.stats()["kernels"]["crc32c"]["gateware"] == correct + 4
    assert backend.counters()["resyncs"] >= 2
    check_executions(model, log, messages)


def test_a_held_request_from_before_a_resync_is_never_run():
    # A request frame held back in the network past a failed exchange arrives after the host
    # has resynchronised: it must never be executed (in place of a new frame, or at all).
    model = crc_model(max_payload=32)
    transport = ScheduledTransport(model, {("up", 3): "drop"})  # the first call's frame
    backend = LinkBackend(transport, timeout=0.002, retries=0, backoff=(1e-6, 1e-6))
    device = Device("scheduled", backend, fallback="never")
    stale = encode_frame(Frame(CRC.id, p.OP_CALL, backend.next_seq(), b"BBBB"))
    # Its one frame is lost and there are no retries: the exchange fails, the link is
    # resynchronised, and the (stateless) call runs again under a new number.
    assert device.crc32c(b"BBBB") == CRC.cpu(b"BBBB")
    assert backend.counters()["calls_run_again"] == 1
    assert device.crc32c(b"CCCC") == CRC.cpu(b"CCCC")
    answer = decode_frame(model.feed(stale)[:-1])  # the lost frame turns up at last
    assert answer.op == p.STATUS_OUT_OF_SEQUENCE
    assert device.crc32c(b"DDDD") == CRC.cpu(b"DDDD")
    assert [m for _, m in model.executed] == [b"BBBB", b"CCCC", b"DDDD"]


def test_message_of_more_frames_than_16_bits_number():
    # Version 1 numbered frames with 16 bits: a message of over 65,536 frames wrapped inside
    # its own exchange and always failed.
    model = crc_model(max_payload=16)
    backend = LinkBackend(ModelTransport(model), timeout=0.5)
    device = Device("model", backend, fallback="never")
    data = random.Random(1).randbytes(16 * 70_000 + 3)
    assert device.crc32c(data) == CRC.cpu(data)
    assert len(model.executed_seqs[-1]) == 70_001
    assert model.executed[-1][1] == data


def test_undecodable_response_is_an_error_not_a_result():
    model = DeviceModel({CRC.id: ("crc32c", lambda m: b"")})  # answers nothing
    backend = LinkBackend(ModelTransport(model))
    never = Device("model", backend, fallback="never")
    with pytest.raises(DeviceError, match="malformed response"):
        never.crc32c(b"abc")
    assert not backend.ready  # distrusted until resynchronised
    auto = Device("model", backend, fallback="auto")
    assert auto.crc32c(b"abc") == CRC.cpu(b"abc")
    assert auto.stats()["kernels"]["crc32c"]["fallback"] == 1


def test_threads_share_one_device():
    model = crc_model(max_payload=32)
    device = Device("model", LinkBackend(ModelTransport(model)), fallback="never")
    wrong: list[int] = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(50):
            data = rng.randbytes(rng.randrange(0, 150))
            if device.crc32c(data) != CRC.cpu(data):
                wrong.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert device.stats()["kernels"]["crc32c"]["gateware"] == 200


def test_a_device_that_comes_back_is_used_again():
    model = crc_model()
    transport = ModelTransport(model)
    backend = LinkBackend(transport, **FAST)
    device = Device("model", backend, fallback="auto")
    assert device.crc32c(b"one") == CRC.cpu(b"one")
    transport.closed = True  # the cable is pulled...
    model.restart()  # ...and the board comes back reset
    results = [device.crc32c(bytes([i])) for i in range(50)]
    assert results == [CRC.cpu(bytes([i])) for i in range(50)]
    stats = device.stats()
    assert stats["link"]["reconnects"] == 1 and stats["link"]["ready"]
    assert stats["kernels"]["crc32c"]["gateware"] >= 2  # the first call and those after


def test_a_dead_device_is_not_tried_on_every_call():
    model = crc_model()
    transport = ModelTransport(model)
    backend = LinkBackend(transport, timeout=0.002, retries=1, backoff=(30.0, 30.0))

    def refuse():
        raise DeviceError("cannot open model: connection refused")

    transport.reopen = refuse
    transport.closed = True
    device = Device("model", backend, fallback="auto")
    assert [device.crc32c(b"x") for _ in range(20)] == [CRC.cpu(b"x")] * 20
    counts = backend.counters()
    assert counts["calls_refused_while_down"] >= 18  # backed off: not tried again each call
    assert device.stats()["fallbacks"] == 20


def test_busy_answer_is_reported_at_once():
    busy = encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.STATUS_BUSY, 0,
                              b"another host holds this virtual board", p.FLAG_RESPONSE))

    class Busy(ModelTransport):
        def write(self, data):
            self.inbox += busy

    with pytest.raises(DeviceError, match="another host holds"):
        LinkBackend(Busy(crc_model()), timeout=5.0)
