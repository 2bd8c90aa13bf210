"""CRC-32C: the CPU path against published check values, and the gateware in Amaranth's simulator.

The cocotb testbenches under Verilator are in ``test_crc32c_verilator.py``.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given
from hypothesis import strategies as st

import offload
from hdl.kernels.crc32c import Crc32cKernel, crc32c_ref
from offload.kernels import crc32c as crc32c_module

crc32c = crc32c_module.SPEC

# RFC 3720 (iSCSI), appendix B.4, and the customary check value of the 9 ASCII digits.
CHECK_VALUES = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
]


@pytest.mark.parametrize("data, expected", CHECK_VALUES)
def test_cpu_path_check_values(data, expected):
    assert crc32c.cpu(data) == expected
    assert crc32c_ref(data) == expected  # the model the gateware's matrices come from


@given(st.binary(max_size=300))
def test_cpu_path_matches_bit_serial_model(data):
    assert crc32c.cpu(data) == crc32c_ref(data)


@pytest.mark.parametrize("convert", [bytes, bytearray, memoryview,
                                     lambda b: np.frombuffer(b, dtype=np.uint8)])
def test_device_accepts_byte_likes(convert):
    with offload.open("cpu") as dev:
        assert dev.crc32c(convert(b"123456789")) == 3808858755


@pytest.mark.parametrize("bad", ["123456789", [1, 2, 3], 12345, np.zeros(4, dtype=np.int32),
                                 np.zeros((2, 2), dtype=np.uint8)])
def test_device_rejects_other_types(bad):
    with offload.open("cpu") as dev:
        with pytest.raises(TypeError, match="bytes, bytearray, memoryview"):
            dev.crc32c(bad)


def test_codec_round_trip():
    assert crc32c_module.decode({}, [crc32c.cpu(b"abc").to_bytes(4, "little")], b"abc") \
        == crc32c.cpu(b"abc")
    with pytest.raises(ValueError, match="4 bytes"):
        crc32c_module.decode({}, [b"\x00\x01"], b"abc")


@pytest.mark.parametrize("width, error", [(3, ValueError), (0, ValueError), (16, ValueError),
                                          ("4", TypeError), (True, TypeError)])
def test_gateware_rejects_bad_width(width, error):
    with pytest.raises(error, match="width"):
        Crc32cKernel(width)


def simulate(width, beats_of_messages, *, seed, idle=0.3, backpressure=0.3):
    """Drive beats through the kernel in Amaranth's simulator; return (data, error) per response.

    ``beats_of_messages`` is a list of messages, each a list of ``(data_bytes, nbytes)`` beats.
    """
    dut = Crc32cKernel(width)
    rng = random.Random(seed)
    responses = []

    async def source(ctx):
        for beats in beats_of_messages:
            for i, (chunk, nbytes) in enumerate(beats):
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, {
                    "data": int.from_bytes(chunk, "little"), "nbytes": nbytes,
                    "last": i == len(beats) - 1, "error": 0,
                })
                await ctx.tick().until(dut.i_stream.ready)
                ctx.set(dut.i_stream.valid, 0)

    async def sink(ctx):
        for _ in beats_of_messages:
            data, error = b"", False
            while True:
                while rng.random() < backpressure:
                    await ctx.tick()
                ctx.set(dut.o_stream.ready, 1)
                payload, = await ctx.tick().sample(dut.o_stream.payload).until(dut.o_stream.valid)
                ctx.set(dut.o_stream.ready, 0)
                data += int(payload.data).to_bytes(width, "little")[:int(payload.nbytes)]
                if payload.last:
                    error = bool(payload.error)
                    break
            responses.append((data, error))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return responses


def to_beats(message, width):
    chunks = [message[i:i + width] for i in range(0, len(message), width)] or [b""]
    return [(c, len(c)) for c in chunks]


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_gateware_amaranth_sim_random(width):
    rng = random.Random(width)
    lengths = [0, 1, width - 1, width, width + 1, 2 * width] + [rng.randrange(64)
                                                                 for _ in range(24)]
    messages = [rng.randbytes(n) for n in lengths]
    responses = simulate(width, [to_beats(m, width) for m in messages], seed=width)
    assert [int.from_bytes(d, "little") for d, _ in responses] == [crc32c.cpu(m) for m in messages]
    assert all(len(d) == 4 for d, _ in responses)
    assert not any(err for _, err in responses)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_gateware_flags_malformed_last_beat(width):
    # A last beat claiming more bytes than a beat holds: the response still comes, flagged, and
    # the kernel goes on to answer the next message correctly.
    good = b"next message"
    bad_beats = [(b"\x55" * width, width), (b"\xaa" * width, width + 1)]
    responses = simulate(width, [bad_beats, to_beats(good, width)], seed=1)
    assert responses[0][1] is True
    whole = b"\x55" * width + b"\xaa" * width
    assert int.from_bytes(responses[0][0], "little") == crc32c.cpu(whole)
    assert responses[1] == (crc32c.cpu(good).to_bytes(4, "little"), False)
