"""The host link driver against a Python model of the device, with and without faults."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hdl.link import protocol as p
from offload import DeviceError, kernels
from offload.device import Device
from offload.link.codec import Frame, FrameError, decode_frame, encode_frame, wire_size
from offload.link.driver import LinkBackend

from .device_model import DeviceModel, ModelTransport

CRC = kernels.get("crc32c")


def crc_device(**kwargs):
    return DeviceModel({CRC.id: ("crc32c", lambda m: CRC.cpu(m).to_bytes(4, "little"))},
                       **kwargs)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=600),
       st.integers(0, 1))
def test_frame_round_trip(kernel, op, seq, payload, flags):
    frame = Frame(kernel, op, seq, payload, flags)
    wire = encode_frame(frame)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert len(wire) <= wire_size(len(payload))
    assert decode_frame(wire[:-1]) == frame


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, p.SEQ_MASK),
       st.binary(max_size=40), st.integers(0, 255))
def test_the_host_packs_the_header_as_the_gateware_layout_does(kernel, op, seq, payload, flags):
    """One header layout (``protocol.HEADER``) for both ends: the bytes the host sends are the
    layout's value, little-endian, with its fields set from the frame."""
    from cobs import cobs

    body = cobs.decode(encode_frame(Frame(kernel, op, seq, payload, flags))[:-1])
    header = p.HEADER.const({"version": p.LINK_VERSION, "kernel": kernel, "op": op,
                             "flags": flags, "seq": seq, "length": len(payload)})
    assert body[:p.HEADER_SIZE] == header.as_value().value.to_bytes(p.HEADER_SIZE, "little")


def test_corrupt_frame_is_rejected():
    wire = bytearray(encode_frame(Frame(1, 0, 7, b"hello")))
    wire[5] ^= 0x10
    with pytest.raises(FrameError):
        decode_frame(bytes(wire[:-1]))


def test_manifest_and_calls_through_the_model():
    model = crc_device()
    backend = LinkBackend(ModelTransport(model))
    assert backend.manifest.board == "model" and backend.kernels == {"crc32c"}
    dev = Device("model", backend, fallback="never")
    rng = random.Random(3)
    for size in (0, 1, 255, 256, 257, 1000):
        data = rng.randbytes(size)
        assert dev.crc32c(data) == CRC.cpu(data)
    # Multi-frame messages arrive whole, once.
    assert [len(m) for _, m in model.executed] == [0, 1, 255, 256, 257, 1000]
    assert dev.stats()["kernels"]["crc32c"]["gateware"] == 6


class LossyTransport(ModelTransport):
    """Drops, corrupts, duplicates and delays frames in both directions."""

    def __init__(self, model, rate, seed):
        super().__init__(model)
        self.rng = random.Random(seed)
        self.rate = rate
        self.delayed = []

    def _mangle(self, frames):
        out = []
        for frame in frames:
            r = self.rng.random()
            if r < self.rate:
                continue  # dropped
            if r < 2 * self.rate:
                frame = bytearray(frame)
                frame[self.rng.randrange(len(frame) - 1)] ^= 1 << self.rng.randrange(8)
                frame = bytes(frame)
            elif r < 3 * self.rate:
                out.append(frame)  # duplicated
            elif r < 4 * self.rate:
                self.delayed.append(frame)  # delivered after later ones
                continue
            out.append(frame)
        if self.delayed and self.rng.random() < 0.3:
            out.append(self.delayed.pop(0))
        return b"".join(out)

    @staticmethod
    def _split(data):
        return [f + b"\x00" for f in data.split(b"\x00")[:-1]]

    def write(self, data):
        self.inbox += self._mangle(self._split(self.model.feed(self._mangle(self._split(data)))))


def test_faults_lose_nothing_and_run_nothing_twice():
    model = crc_device()
    backend = LinkBackend(LossyTransport(model, 0.01, seed=1), timeout=0.001)
    dev = Device("lossy", backend, fallback="never")
    rng = random.Random(9)
    messages = [rng.randbytes(rng.randrange(0, 600)) for _ in range(2000)]
    for message in messages:
        assert dev.crc32c(message) == CRC.cpu(message)
    assert [m for _, m in model.executed] == messages  # each once, in order
    counts = backend.counters()
    assert counts["retries"] > 0


def test_dead_device_falls_back_or_raises():
    class Dying(ModelTransport):
        def write(self, data):
            raise DeviceError("connection reset")

    for policy in ("auto", "never"):
        model = crc_device()
        transport = ModelTransport(model)
        backend = LinkBackend(transport)
        transport.__class__ = Dying
        dev = Device("dying", backend, fallback=policy)
        if policy == "never":
            with pytest.raises(DeviceError, match="dying"):
                dev.crc32c(b"abc")
        else:
            assert [dev.crc32c(bytes([i])) for i in range(5)] == [CRC.cpu(bytes([i]))
                                                                  for i in range(5)]
            assert dev.stats()["kernels"]["crc32c"]["fallback"] == 5


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([p.STATUS_UNKNOWN_KERNEL, p.STATUS_TOO_LONG]))
def test_error_statuses_raise(status):
    model = crc_device(max_payload=16)
    backend = LinkBackend(ModelTransport(model))
    if status == p.STATUS_UNKNOWN_KERNEL:
        responses = backend.exchange(200, [(p.OP_CALL, 0, b"x")])
    else:
        backend.manifest = backend.manifest.__class__(**{**backend.manifest.__dict__,
                                                         "max_payload": 64})
        responses = backend.exchange(CRC.id, [(p.OP_CALL, 0, b"x" * 40)])
    assert responses[0].op == status


def test_message_left_open_by_a_dead_host_is_ended():
    model = crc_device()
    first = LinkBackend(ModelTransport(model))
    first.exchange(CRC.id, [(p.OP_CALL, p.FLAG_MORE, b"half of a message")])  # and then it dies
    second = LinkBackend(ModelTransport(model))
    assert second.counters()["messages_closed"] == 1
    dev = Device("model", second, fallback="never")
    assert dev.crc32c(b"123456789") == 0xE3069283


def test_a_serial_port_not_told_its_rate_is_tried_at_3_then_1_mbaud(monkeypatch):
    """A device built at the fallback rate (1 Mbaud: too slow for the PLL's clock) is found by
    a host that was not told the rate; one told the rate tries only that."""
    import offload
    import offload.link.transport as transport

    model = crc_device()
    tried = []

    class Port(ModelTransport):
        """A UART: the model answers only at the rate it was built for, 1 Mbaud."""

        def __init__(self, url, *, baudrate):
            super().__init__(model, name=url)
            tried.append(baudrate)
            self.baudrate = baudrate

        def write(self, data: bytes) -> None:
            if self.baudrate == 1_000_000:
                super().write(data)

    monkeypatch.setattr(transport, "SerialTransport", Port)
    with offload.open("serial:///dev/ttyFAKE", fallback="never", timeout=0.05) as device:
        assert device.crc32c(b"123456789") == CRC.cpu(b"123456789")
    assert tried == [3_000_000, 1_000_000]
    tried.clear()
    with pytest.raises(DeviceError, match="no answer"):
        offload.open("serial:///dev/ttyFAKE", fallback="never", timeout=0.05, retries=1,
                     baudrate=3_000_000)
    assert tried == [3_000_000]
