import random

import pytest
from amaranth.sim import Simulator
from cobs import cobs

from hdl.link.cobs import CobsDecoder, CobsEncoder

from .streams import stream_recv, stream_send


def _frames(rng):
    """Frames that exercise the corners of COBS: zeros at the ends and in runs, and non-zero runs
    of exactly 253, 254 and 255 bytes (a block boundary), alone and before a zero."""
    nonzero = bytes(range(1, 256))
    frames = [b"\x00", b"\x00\x00\x00", b"\x01", b"\x00\x01\x00"]
    for run in (253, 254, 255, 508):
        body = bytes(rng.choice(nonzero) for _ in range(run))
        frames += [body, body + b"\x00", b"\x00" + body]
    for _ in range(12):
        frames.append(bytes(rng.choice([0, 0, rng.randrange(256)])
                            for _ in range(rng.randrange(1, 40))))
    rng.shuffle(frames)
    return frames


def _frame_beats(frames):
    """The encoder's input beats for ``frames``: a byte a beat, ``last`` on each frame's end."""
    return [{"data": byte, "last": int(i == len(frame) - 1)}
            for frame in frames for i, byte in enumerate(frame)]


def _simulate(dut, source, sink):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()


def _decode(link, frames, rng, *, idle, backpressure, cycles):
    """Decode ``link`` (holding ``frames``) with random gaps and stalls; the frames decoded,
    each checked not bad, and the cycles it took."""
    dut = CobsDecoder()
    beats = []
    count = [0]

    async def source(ctx):
        await stream_send(ctx, dut.i_stream, link, rng=rng, idle=idle)

    async def sink(ctx):
        ends = [0]

        def done(out):
            ends[0] += out[-1].end
            return ends[0] == len(frames)
        await stream_recv(ctx, dut.o_stream, beats, rng=rng, backpressure=backpressure,
                          until=done, cycles=cycles)

    async def clock(ctx):
        while True:
            await ctx.tick()
            count[0] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_testbench(clock, background=True)
    sim.run()

    got, frame = [], bytearray()
    for beat in beats:
        assert not beat.bad
        if beat.end:
            got.append(bytes(frame))
            frame.clear()
        else:
            frame.append(beat.data)
    return got, count[0]


@pytest.mark.parametrize("idle, backpressure", [(0.0, 0.0), (0.3, 0.5)])
def test_decoder_round_trip(idle, backpressure):
    rng = random.Random(1)
    frames = _frames(rng)
    # Empty frames (a flush) between frames give nothing.
    link = b"\x00".join(cobs.encode(frame) for frame in frames) + b"\x00\x00"
    got, cycles = _decode(link, frames, rng, idle=idle, backpressure=backpressure,
                          cycles=10 * len(link))
    assert got == frames
    if idle == 0 and backpressure == 0:
        # One byte per cycle, plus the pipeline's fill.
        assert cycles <= len(link) + 2


def test_decoder_flags_truncated_frame():
    # A block that promises four data bytes and is cut after two, then a good frame.
    link = b"\x05\x11\x22\x00" + cobs.encode(b"\x33\x00") + b"\x00"
    dut = CobsDecoder()
    beats = []

    async def source(ctx):
        await stream_send(ctx, dut.i_stream, link)

    async def sink(ctx):
        await stream_recv(ctx, dut.o_stream, beats, cycles=3 * len(link))

    _simulate(dut, source, sink)
    summary = [("end", beat.bad) if beat.end else beat.data for beat in beats]
    assert summary == [0x11, 0x22, ("end", 1), 0x33, 0x00, ("end", 0)]


@pytest.mark.parametrize("seed, idle, backpressure", [
    (2, 0.0, 0.0), (2, 0.3, 0.5), (3, 0.0, 0.8), (4, 0.8, 0.0), (5, 0.5, 0.5),
])
def test_encoder_matches_cobs_package(seed, idle, backpressure):
    """The encoder's output is what the ``cobs`` package encodes, and the decoder takes it back
    to the frames, with either end of each stalling at random."""
    rng = random.Random(seed)
    frames = _frames(rng)
    expected = b"".join(cobs.encode(frame) + b"\x00" for frame in frames)
    dut = CobsEncoder()
    got = []

    async def source(ctx):
        await stream_send(ctx, dut.i_stream, _frame_beats(frames), rng=rng, idle=idle)

    async def sink(ctx):
        await stream_recv(ctx, dut.o_stream, got, rng=rng, backpressure=backpressure,
                          until=lambda out: len(out) == len(expected), cycles=40 * len(expected))

    _simulate(dut, source, sink)
    assert bytes(got) == expected
    decoded, _ = _decode(expected, frames, rng, idle=idle, backpressure=backpressure,
                         cycles=40 * len(expected))
    assert decoded == frames


@pytest.mark.parametrize("frames", [
    [bytes(300)],  # blocks of code 1, one after the other
    [b"\x11\x22\x00" * 100 + b"\x33"],  # blocks as long as what they take in
    [bytes([7]) * 254 + b"\x00", b"\x00", b"\x05\x00\x06", bytes(2)],  # ends and tails
])
def test_encoder_output_has_no_gap(frames):
    """Fed a byte every cycle and never held up, the encoder sends a byte every cycle from its
    first to its last once the blocks it sends are no shorter than what comes in meanwhile: no
    cycle is lost between blocks, before the empty block or the delimiter."""
    expected = b"".join(cobs.encode(frame) + b"\x00" for frame in frames)
    dut = CobsEncoder()
    got, valid_cycles = [], []

    async def source(ctx):
        await stream_send(ctx, dut.i_stream, _frame_beats(frames))

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        cycle = 0
        while len(got) < len(expected) and cycle < 4 * len(expected):
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload)
            if valid:
                got.append(payload)
                valid_cycles.append(cycle)
            cycle += 1

    _simulate(dut, source, sink)
    assert bytes(got) == expected
    assert valid_cycles[-1] - valid_cycles[0] == len(expected) - 1
