# amaranth: UnusedElaboratable=no

import random

import google_crc32c
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hdl.kernels.crc32c import Crc32cKernel
from hdl.link.bridge import CRC_RESIDUE, LinkBridge
from hdl.link.cobs import CobsDecoder, CobsEncoder
from hdl.link.protocol import (
    FLAG_CONTINUE,
    FLAG_MORE,
    FLAG_RESPONSE,
    KERNEL_COUNTERS,
    LINK_COUNTERS,
    LINK_VERSION,
    OP_COUNTERS,
    OP_MANIFEST,
    OP_RESET,
    OP_SYNC,
    STATUS_BAD_FRAME,
    STATUS_BAD_OPCODE,
    STATUS_KERNEL_ERROR,
    STATUS_KERNEL_TIMEOUT,
    STATUS_OK,
    STATUS_OUT_OF_SEQUENCE,
    STATUS_TOO_LONG,
    STATUS_UNKNOWN_KERNEL,
)
from hdl.stream import byte_stream, request_stream

from .frames import parse_responses, ref_frame, ref_request
from .streams import stream_recv, stream_send

MANIFEST = b'{"link":2,"board":"test","kernels":[]}'
MAX_PAYLOAD = 64
MAX_RESPONSE = 16
TIMEOUT = 150

CRC1, CRC4, ECHO, STUCK, OPECHO, SLOW, SLOW4, COUNT = range(1, 9)
KERNEL_ORDER = [CRC1, CRC4, ECHO, STUCK, OPECHO, SLOW, SLOW4, COUNT]


class EchoKernel(wiring.Component):
    """Answers each message with itself, a beat per cycle as its beats come, with ``error`` on
    the last beat when the message starts with 0xEE."""

    operations = ("call",)

    def __init__(self, width=1):
        self.width = width
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        first, bad = Signal(init=1), Signal()
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & i.ready):
            is_bad = bad | (first & (i.payload.nbytes != 0) & (i.payload.data[:8] == 0xEE))
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(i.payload.data),
                o.payload.nbytes.eq(i.payload.nbytes),
                o.payload.last.eq(i.payload.last),
                o.payload.error.eq(i.payload.last & is_bad),
                bad.eq(is_bad & ~i.payload.last),
                first.eq(i.payload.last),
            ]
        return m


class SlowEchoKernel(wiring.Component):
    """An :class:`EchoKernel` whose response goes through a 64-beat queue and out at most one
    beat every ``4 * width + 1`` cycles: it takes a message faster than it answers, so most of a
    response comes after the message has ended."""

    operations = ("call",)

    def __init__(self, width=1):
        self.width = width
        self.gap = 4 * width
        super().__init__({"i_stream": In(request_stream(width)),
                          "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.echo = echo = EchoKernel(self.width)
        width = len(echo.o_stream.payload.as_value())
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=width, depth=64)
        wiring.connect(m, wiring.flipped(self.i_stream), echo.i_stream)
        o = self.o_stream
        gap = Signal(range(self.gap + 1))
        m.d.comb += [
            queue.w_data.eq(echo.o_stream.payload),
            queue.w_en.eq(echo.o_stream.valid),
            echo.o_stream.ready.eq(queue.w_rdy),
            o.valid.eq(queue.r_rdy & (gap == 0)),
            o.payload.eq(queue.r_data),
            queue.r_en.eq(o.ready & (gap == 0)),
        ]
        with m.If(o.valid & o.ready):
            m.d.sync += gap.eq(self.gap)
        with m.Elif(gap != 0):
            m.d.sync += gap.eq(gap - 1)
        return m


class OpEchoKernel(wiring.Component):
    """Three operations: answers each message with its ``op``, then the message."""

    width = 1
    operations = ("first", "second", "third")
    i_stream: In(request_stream(1))
    o_stream: Out(byte_stream(1))

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        told = Signal()  # the op of the message has gone out
        free = ~o.valid | o.ready
        m.d.comb += i.ready.eq(free & told)
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & free & ~told):
            m.d.sync += [
                o.valid.eq(1), o.payload.data.eq(i.payload.op), o.payload.nbytes.eq(1),
                o.payload.last.eq(0), o.payload.error.eq(0), told.eq(1),
            ]
        with m.If(i.valid & i.ready):
            m.d.sync += [
                o.valid.eq(1),
                o.payload.data.eq(i.payload.data),
                o.payload.nbytes.eq(i.payload.nbytes),
                o.payload.last.eq(i.payload.last),
                o.payload.error.eq(0),
                told.eq(~i.payload.last),
            ]
        return m


class CounterKernel(wiring.Component):
    """Stateful: answers each message with one byte, the messages it has taken since reset."""

    width = 1
    operations = ("call",)
    i_stream: In(request_stream(1))
    o_stream: Out(byte_stream(1))

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        count = Signal(8)
        m.d.comb += [
            i.ready.eq(~o.valid | o.ready),
            o.payload.data.eq(count), o.payload.nbytes.eq(1), o.payload.last.eq(1),
        ]
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & i.ready & i.payload.last):
            m.d.sync += [o.valid.eq(1), count.eq(count + 1)]
        return m


class StuckKernel(wiring.Component):
    """Never takes a beat."""

    width = 1
    operations = ("call",)
    i_stream: In(request_stream(1))
    o_stream: Out(byte_stream(1))

    def elaborate(self, platform):
        return Module()


def make_bridge(**kwargs):
    kernels = [(CRC1, Crc32cKernel(1)), (CRC4, Crc32cKernel(4)), (ECHO, EchoKernel()),
               (STUCK, StuckKernel()), (OPECHO, OpEchoKernel()), (SLOW, SlowEchoKernel()),
               (SLOW4, SlowEchoKernel(4)), (COUNT, CounterKernel())]
    params = dict(max_payload=MAX_PAYLOAD, max_response=MAX_RESPONSE, timeout_cycles=TIMEOUT)
    params.update(kwargs)
    return LinkBridge(kernels, MANIFEST, **params)


def run(chunks, responses, *, seed=0, idle=0.0, backpressure=0.0, settle=200, dut=None):
    """Send ``chunks`` (bytes, or an int for that many silent cycles) to a bridge and return the
    first ``responses`` response frames, checking that no other frame follows within ``settle``
    cycles. Also returns the cycles from the first byte taken to the last."""
    dut = make_bridge() if dut is None else dut
    rng = random.Random(seed)
    out = []
    cycles = [0]
    span = []
    total = sum(len(c) for c in chunks if not isinstance(c, int))

    async def clock(ctx):
        while True:
            await ctx.tick()
            cycles[0] += 1

    async def source(ctx):
        span.append(cycles[0])
        for chunk in chunks:
            if isinstance(chunk, int):
                await ctx.tick().repeat(chunk)
            else:
                await stream_send(ctx, dut.i_bytes, chunk, rng=rng, idle=idle)
        span.append(cycles[0])

    async def sink(ctx):
        frames = [0]

        def done(got):
            frames[0] += got[-1] == 0
            return frames[0] == responses
        if responses:
            await stream_recv(ctx, dut.o_bytes, out, rng=rng, backpressure=backpressure,
                              until=done, cycles=100 * total + 50 * TIMEOUT + 5000)
        extra = []
        await stream_recv(ctx, dut.o_bytes, extra, cycles=settle)
        assert not extra, f"unexpected bytes after the responses: {bytes(extra).hex()}"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    got = parse_responses(bytes(out))
    assert len(got) == responses
    return got, span[1] - span[0]


def crc_le(data):
    return google_crc32c.value(data).to_bytes(4, "little")


def u32(value):
    return value.to_bytes(4, "little")


def counters_request(seq=0):
    return ref_request(0, seq, opcode=OP_COUNTERS)


def sync_request(target, nonce=0, *, size=4):
    return ref_request(0, nonce, target.to_bytes(4, "little")[:size], opcode=OP_SYNC)


def parse_counters(payload):
    words = [int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload), 4)]
    link = dict(zip(LINK_COUNTERS, words, strict=False))
    words = words[len(LINK_COUNTERS):]
    n = len(KERNEL_COUNTERS)
    assert len(words) == n * len(KERNEL_ORDER)
    kernels = {kid: dict(zip(KERNEL_COUNTERS, words[i * n:(i + 1) * n], strict=True))
               for i, kid in enumerate(KERNEL_ORDER)}
    return link, kernels


def test_crc_residue():
    # The receiver's check: the register after a frame and its CRC is the same for any frame.
    rng = random.Random(0)
    for length in (0, 1, 7, 100):
        data = rng.randbytes(length)
        state = google_crc32c.value(data + crc_le(data)) ^ 0xFFFFFFFF
        assert state == CRC_RESIDUE


@pytest.mark.parametrize("idle, backpressure", [(0.0, 0.0), (0.3, 0.5)])
def test_crc_requests(idle, backpressure):
    rng = random.Random(1)
    cases = [(CRC1, b""), (CRC1, b"\x00"), (CRC1, rng.randbytes(13)),
             (CRC4, b""), (CRC4, b"abc"), (CRC4, rng.randbytes(17)), (CRC4, bytes(8))]
    chunks = [ref_request(kernel, seq, payload) for seq, (kernel, payload) in enumerate(cases)]
    got, _ = run(chunks, len(cases), seed=2, idle=idle, backpressure=backpressure)
    for seq, ((kernel, payload), response) in enumerate(zip(cases, got, strict=True)):
        assert (response.version, response.kernel, response.status, response.flags,
                response.seq) == (LINK_VERSION, kernel, STATUS_OK, FLAG_RESPONSE, seq)
        assert response.payload == crc_le(payload)


def test_manifest_reports_expected_seq():
    chunks = [
        ref_request(0, 77, opcode=OP_MANIFEST),
        ref_request(CRC1, 0, b"a"),
        ref_request(CRC1, 1, b"b"),
        ref_request(0, 78, opcode=OP_MANIFEST),
    ]
    got, _ = run(chunks, 4)
    assert (got[0].kernel, got[0].status, got[0].seq) == (0, STATUS_OK, 77)
    assert got[0].payload == u32(0) + MANIFEST
    assert got[3].payload == u32(2) + MANIFEST
    assert got[3].seq == 78


def test_counters():
    chunks = [
        ref_request(CRC1, 0, b"12345"),
        ref_request(CRC4, 1, b"123456789"),
        ref_request(ECHO, 2, b"\xee\x01"),  # the echo kernel raises error
        counters_request(),
    ]
    got, _ = run(chunks, 4)
    assert [r.status for r in got] == [STATUS_OK, STATUS_OK, STATUS_KERNEL_ERROR, STATUS_OK]
    link, kernels = parse_counters(got[3].payload)
    assert link == dict(frames_in=4, bad_crc=0, timeouts=0, replays=0, out_of_sequence=0,
                        frames_out=3)
    assert {k: v for k, v in kernels[CRC1].items() if k != "busy_cycles"} == dict(
        beats_in=5, beats_out=4, errors=0, open_message=0)
    assert {k: v for k, v in kernels[CRC4].items() if k != "busy_cycles"} == dict(
        beats_in=3, beats_out=1, errors=0, open_message=0)
    assert {k: v for k, v in kernels[ECHO].items() if k != "busy_cycles"} == dict(
        beats_in=2, beats_out=2, errors=1, open_message=0)
    # A kernel is busy from its first beat to its response's last, at a beat per cycle.
    assert 5 + 4 <= kernels[CRC1]["busy_cycles"] <= 5 + 4 + Crc32cKernel.LATENCY + 10
    assert kernels[STUCK] == dict(busy_cycles=0, beats_in=0, beats_out=0, errors=0,
                                  open_message=0)


def test_bad_frames_dropped_and_counted():
    good = ref_request(CRC1, 0, b"xyz")
    chunks = [
        ref_request(CRC1, 0, b"xyz", crc_error=1 << 30),  # wrong CRC
        ref_frame(b"\x01\x01\x00"),  # shorter than a header and a CRC
        b"\x05\x11\x22\x00",  # COBS block cut short
        b"\x00\x00",  # empty frames are ignored, not counted
        good,
        counters_request(),
    ]
    got, _ = run(chunks, 2)
    assert got[0].payload == crc_le(b"xyz")
    link, _ = parse_counters(got[1].payload)
    assert (link["bad_crc"], link["frames_in"]) == (3, 2)


def test_bad_frame_status():
    chunks = [
        ref_request(CRC1, 0, b"abc", version=1),  # the previous version
        ref_request(CRC1, 1, b"abc", length=2),
        ref_request(CRC1, 2, b"abc", length=300),
        ref_request(0, 9, b"", opcode=OP_MANIFEST, version=0),
        ref_request(CRC1, 3, b"abc"),
    ]
    got, _ = run(chunks, 5)
    assert [r.status for r in got] == [STATUS_BAD_FRAME] * 4 + [STATUS_OK]
    assert [r.seq for r in got] == [0, 1, 2, 9, 3]
    assert [r.payload for r in got[:4]] == [b""] * 4


def test_timeout_drops_half_frame():
    frame = ref_request(CRC1, 0, b"hello")
    chunks = [frame[:7], TIMEOUT + 20, frame, counters_request()]
    got, _ = run(chunks, 2)
    assert got[0].payload == crc_le(b"hello")
    link, _ = parse_counters(got[1].payload)
    assert (link["timeouts"], link["bad_crc"], link["frames_in"]) == (1, 0, 2)


def test_silence_shorter_than_timeout_keeps_frame():
    frame = ref_request(CRC1, 0, b"hello")
    got, _ = run([frame[:7], TIMEOUT - 20, frame[7:]], 1)
    assert got[0].payload == crc_le(b"hello")


def test_retry_replays_without_executing():
    chunks = [
        ref_request(CRC1, 0, b"abcd"),
        ref_request(ECHO, 1, b"\xee\x05"),
        ref_request(CRC1, 0, b"abcd"),  # retries: answered from the window
        ref_request(ECHO, 1, b"\xee\x05"),
        ref_request(CRC1, 2, b"ef"),
        ref_request(CRC1, 0, b"abcd"),
        counters_request(),
    ]
    got, _ = run(chunks, 7)
    for first, again in ((0, 2), (1, 3), (0, 5)):
        assert got[again] == got[first]
    assert got[1].status == STATUS_KERNEL_ERROR and got[1].payload == b"\xee\x05"
    assert got[4].payload == crc_le(b"ef")
    link, kernels = parse_counters(got[6].payload)
    assert link["replays"] == 3
    assert kernels[CRC1]["beats_in"] == 4 + 2
    assert kernels[ECHO]["beats_in"] == 2


@pytest.mark.parametrize("window", [1, 2])
def test_replay_window_edge(window):
    # The last `window` executed frames replay; an older one is out of sequence. With a window
    # of 1 a frame executes into the slot whose replay is still being sent.
    dut = make_bridge(window=window)
    chunks = [ref_request(CRC1, seq, bytes([seq])) for seq in range(3)]
    replayed = list(range(3 - window, 3))
    chunks += [ref_request(CRC1, seq, bytes([seq])) for seq in replayed]
    chunks += [ref_request(CRC1, 2 - window, bytes([2 - window])), ref_request(CRC1, 3, b"\x03")]
    got, _ = run(chunks, 3 + window + 2, dut=dut, backpressure=0.5)
    for i, seq in enumerate(replayed):
        assert got[3 + i] == got[seq]
    assert got[3 + window].status == STATUS_OUT_OF_SEQUENCE
    assert got[3 + window].payload == u32(3)
    assert got[4 + window].payload == crc_le(b"\x03")


def test_out_of_sequence():
    chunks = [
        ref_request(CRC1, 5, b"a"),  # nothing executed yet: the device expects 0
        ref_request(CRC1, 0xFFFFFFFF, b"a"),  # just behind, but nothing was executed there
        ref_request(CRC1, 0, b"a"),
        ref_request(CRC1, 2, b"a"),  # ahead
        ref_request(CRC1, 1, b"b"),
        counters_request(),
    ]
    got, _ = run(chunks, 6)
    assert [(r.status, r.seq) for r in got[:5]] == [
        (STATUS_OUT_OF_SEQUENCE, 5), (STATUS_OUT_OF_SEQUENCE, 0xFFFFFFFF), (STATUS_OK, 0),
        (STATUS_OUT_OF_SEQUENCE, 2), (STATUS_OK, 1)]
    assert [r.payload for r in got[:4]] == [u32(0), u32(0), crc_le(b"a"), u32(1)]
    link, kernels = parse_counters(got[5].payload)
    assert link["out_of_sequence"] == 3
    assert kernels[CRC1]["beats_in"] == 2


def test_unknown_kernel_and_bad_opcode():
    chunks = [
        ref_request(9, 0, b"abc"),
        ref_request(CRC1, 1, b"abc", opcode=3),
        ref_request(0, 40, opcode=7),
        ref_request(CRC1, 2, b"abc"),
    ]
    got, _ = run(chunks, 4)
    assert [(r.kernel, r.status, r.seq, r.payload) for r in got] == [
        (9, STATUS_UNKNOWN_KERNEL, 0, b""),
        (CRC1, STATUS_BAD_OPCODE, 1, b""),
        (0, STATUS_BAD_OPCODE, 40, b""),
        (CRC1, STATUS_OK, 2, crc_le(b"abc")),
    ]


def test_too_long_request_and_long_response():
    rng = random.Random(3)
    long = rng.randbytes(MAX_PAYLOAD + 1)
    full = rng.randbytes(MAX_PAYLOAD)
    over = bytes(range(1, MAX_RESPONSE + 2))
    chunks = [
        ref_request(CRC1, 0, long),
        ref_request(CRC1, 1, full),
        ref_request(ECHO, 2, over),  # a response one byte over max_response: not TOO_LONG
        ref_request(ECHO, 3, flags=FLAG_CONTINUE),
        ref_request(ECHO, 4, bytes(range(1, MAX_RESPONSE + 1))),  # exactly max_response
        ref_request(ECHO, 5, flags=FLAG_CONTINUE),  # nothing pending
        counters_request(),
    ]
    got, _ = run(chunks, 7)
    assert [(r.status, r.flags, r.payload) for r in got[:6]] == [
        (STATUS_TOO_LONG, FLAG_RESPONSE, b""),
        (STATUS_OK, FLAG_RESPONSE, crc_le(full)),
        (STATUS_OK, FLAG_RESPONSE | FLAG_MORE, over[:MAX_RESPONSE]),
        (STATUS_OK, FLAG_RESPONSE, over[MAX_RESPONSE:]),
        (STATUS_OK, FLAG_RESPONSE, bytes(range(1, MAX_RESPONSE + 1))),
        (STATUS_OK, FLAG_RESPONSE, b""),
    ]
    _, kernels = parse_counters(got[6].payload)
    assert kernels[CRC1]["beats_in"] == MAX_PAYLOAD
    assert kernels[ECHO]["beats_in"] == kernels[ECHO]["beats_out"] == 2 * MAX_RESPONSE + 1


@pytest.mark.parametrize("kernel", [CRC1, CRC4])
def test_flag_more_message_over_three_frames(kernel):
    rng = random.Random(kernel)
    parts = [rng.randbytes(3), rng.randbytes(6), rng.randbytes(5)]
    chunks = [
        ref_request(kernel, 0, parts[0], flags=FLAG_MORE),
        ref_request(CRC1 if kernel == CRC4 else CRC4, 1, b"between"),  # another kernel meanwhile
        ref_request(kernel, 2, parts[1], flags=FLAG_MORE),
        ref_request(kernel, 3, parts[2]),
        ref_request(kernel, 4, b"", flags=FLAG_MORE),
        ref_request(kernel, 5, b"q", flags=FLAG_MORE),
        ref_request(kernel, 6, b""),
    ]
    got, _ = run(chunks, 7)
    assert [(r.status, r.payload) for r in got] == [
        (STATUS_OK, b""), (STATUS_OK, crc_le(b"between")), (STATUS_OK, b""),
        (STATUS_OK, crc_le(b"".join(parts))), (STATUS_OK, b""), (STATUS_OK, b""),
        (STATUS_OK, crc_le(b"q")),
    ]


def test_stuck_kernel_is_timed_out():
    chunks = [ref_request(STUCK, 0, b"abc"), ref_request(CRC1, 1, b"abc"), counters_request()]
    got, _ = run(chunks, 3)
    assert [(r.status, r.payload) for r in got[:2]] == [
        (STATUS_KERNEL_TIMEOUT, b""), (STATUS_OK, crc_le(b"abc"))]
    _, kernels = parse_counters(got[2].payload)
    assert kernels[STUCK]["beats_in"] == 0 and kernels[STUCK]["busy_cycles"] >= TIMEOUT


def test_back_to_back_one_byte_per_cycle():
    rng = random.Random(4)
    payloads = [rng.randbytes(48) for _ in range(8)]
    chunks = [b"".join(ref_request(CRC1, seq, p) for seq, p in enumerate(payloads))]
    got, cycles = run(chunks, len(payloads))
    assert [r.payload for r in got] == [crc_le(p) for p in payloads]
    per_byte = cycles / len(chunks[0])
    print(f"{len(chunks[0])} link bytes in {cycles} cycles: {per_byte:.3f} cycles per byte")
    assert per_byte < 1.1


def test_random_traffic_under_backpressure():
    rng = random.Random(5)
    chunks, expect = [], []
    seq = 0
    for _ in range(14):
        kernel = rng.choice([CRC1, CRC4, ECHO])
        payload = rng.randbytes(rng.randrange(0, 12))
        if kernel == ECHO and payload[:1] == b"\xee":
            payload = b"\x00" + payload
        chunks.append(ref_request(kernel, seq, payload))
        expect.append(payload if kernel == ECHO else crc_le(payload))
        if rng.random() < 0.3:  # a retry
            chunks.append(chunks[-1])
            expect.append(expect[-1])
        seq += 1
    got, _ = run(chunks, len(chunks), seed=6, idle=0.4, backpressure=0.7)
    assert [r.status for r in got] == [STATUS_OK] * len(chunks)
    assert [r.payload for r in got] == expect


class FramesThroughCobs(wiring.Component):
    """A bridge with ``framing="frames"`` (as the UDP link has it) between a COBS decoder and
    encoder of its own: the same ports as a ``"cobs"`` bridge, so every test's traffic can run
    through it."""

    i_bytes: In(stream.Signature(8))
    o_bytes: Out(stream.Signature(8))

    def __init__(self, **kwargs):
        self.bridge = make_bridge(framing="frames", **kwargs)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = CobsDecoder()
        m.submodules.bridge = self.bridge
        m.submodules.encoder = encoder = CobsEncoder()
        wiring.connect(m, wiring.flipped(self.i_bytes), decoder.i_stream)
        wiring.connect(m, decoder.o_stream, self.bridge.i_frames)
        wiring.connect(m, self.bridge.o_frames, encoder.i_stream)
        wiring.connect(m, encoder.o_stream, wiring.flipped(self.o_bytes))
        return m


def mixed_calls(rng, count=10):
    """``count`` calls (sequence numbers from 0) to the CRC and echo kernels, some retried."""
    chunks = []
    for seq in range(count):
        kernel = rng.choice([CRC1, CRC4, ECHO])
        chunks.append(ref_request(kernel, seq, b"\x01" + rng.randbytes(rng.randrange(0, 40))))
        if rng.random() < 0.3:
            chunks.append(chunks[-1])  # a retry: replayed
    return chunks


def test_the_frames_framing_answers_as_the_cobs_one():
    """The UDP link's bridge (whole frames in and out) gives the same responses, byte for byte,
    as the UART's to the same traffic: calls, a retry, a bad CRC, a sync, the counters."""
    rng = random.Random(8)
    chunks = mixed_calls(rng)
    damaged = bytearray(ref_request(CRC1, 10, b"lost"))
    damaged[3] ^= 0x40
    chunks += [bytes(damaged), sync_request(0x4000_0000, nonce=7), counters_request()]
    answers = len(chunks) - 1  # the damaged frame gets none
    want, _ = run(chunks, answers, seed=9, idle=0.3, backpressure=0.5)
    got, _ = run(chunks, answers, seed=9, idle=0.3, backpressure=0.5, dut=FramesThroughCobs())
    assert got[:-1] == want[:-1]
    link, _ = parse_counters(got[-1].payload)
    assert link == parse_counters(want[-1].payload)[0] and link["bad_crc"] == 1
    with pytest.raises(ValueError, match="framing must be"):
        make_bridge(framing="udp")


@pytest.mark.parametrize("crc_bits", [1, 2, 4])
def test_slower_crcs_answer_as_the_byte_one(crc_bits):
    """A bridge whose CRCs take ``crc_bits`` a cycle (a UART device's, to save logic) gives the
    same responses, byte for byte, as one taking a byte a cycle, under idle gaps and
    backpressure: calls, retries, a damaged frame, a half frame dropped, a sync, the counters.
    Back to back, a byte takes ``8 // crc_bits`` cycles at most."""
    rng = random.Random(10 + crc_bits)
    chunks = mixed_calls(rng)
    damaged = bytearray(ref_request(CRC1, 10, b"lost"))
    damaged[5] ^= 0x08
    half = ref_request(CRC4, 10, b"half")[:9]
    chunks += [bytes(damaged), half, 2 * TIMEOUT, sync_request(0x4000_0000, nonce=7),
               ref_request(CRC1, 0x4000_0000, b"after"), counters_request()]
    answers = len(chunks) - 3  # the damaged frame, the half frame and the silence get none
    want, _ = run(chunks, answers, seed=9, idle=0.3, backpressure=0.5)
    got, _ = run(chunks, answers, seed=9, idle=0.3, backpressure=0.5,
                 dut=make_bridge(crc_bits=crc_bits))
    assert got[:-1] == want[:-1]
    (link, kernels), (want_link, want_kernels) = (parse_counters(r[-1].payload)
                                                  for r in (got, want))
    assert link == want_link and link["bad_crc"] == 1 and link["timeouts"] == 1
    for counts in (*kernels.values(), *want_kernels.values()):
        del counts["busy_cycles"]  # cycles: more of them with slower CRCs
    assert kernels == want_kernels
    payloads = [rng.randbytes(48) for _ in range(4)]
    stream_in = [b"".join(ref_request(CRC1, seq, p) for seq, p in enumerate(payloads))]
    got, cycles = run(stream_in, len(payloads), dut=make_bridge(crc_bits=crc_bits))
    assert [r.payload for r in got] == [crc_le(p) for p in payloads]
    assert cycles / len(stream_in[0]) < 8 // crc_bits + 0.1


def test_parameters_checked():
    kernel = Crc32cKernel(1)
    with pytest.raises(TypeError, match="kernels must be"):
        LinkBridge(5, b"", timeout_cycles=10)
    with pytest.raises(ValueError, match="kernel id must be from 1 to 255"):
        LinkBridge([(0, kernel)], b"", timeout_cycles=10)
    with pytest.raises(ValueError, match="given twice"):
        LinkBridge([(1, kernel), (1, Crc32cKernel(1))], b"", timeout_cycles=10)
    with pytest.raises(TypeError, match="must be a wiring.Component"):
        LinkBridge([(1, object())], b"", timeout_cycles=10)
    with pytest.raises(TypeError, match="manifest must be bytes"):
        LinkBridge([], "{}", timeout_cycles=10)
    with pytest.raises(ValueError, match="max_payload must be from 4 to 65535"):
        LinkBridge([], b"", max_payload=0, timeout_cycles=10)
    with pytest.raises(ValueError, match="max_payload must be from 4 to 65535"):
        LinkBridge([], b"", max_payload=3, timeout_cycles=10)
    with pytest.raises(TypeError, match="timeout_cycles must be an integer"):
        LinkBridge([], b"", timeout_cycles=None)
    with pytest.raises(ValueError, match="window must be a power of two"):
        LinkBridge([], b"", timeout_cycles=10, window=6)
    with pytest.raises(ValueError, match="crc_bits must be 1, 2, 4 or 8"):
        LinkBridge([], b"", timeout_cycles=10, crc_bits=3)
    with pytest.raises(ValueError, match="max_response must be a multiple of every kernel's"):
        LinkBridge([(1, Crc32cKernel(4))], b"", max_response=6, timeout_cycles=10)

    class Undeclared(StuckKernel):
        operations = None

    class TooMany(StuckKernel):
        operations = ("op",) * 129

    for kernel in (Undeclared(), TooMany()):
        with pytest.raises(TypeError, match="must declare its operations"):
            LinkBridge([(1, kernel)], b"", timeout_cycles=10)

    class OldPorts(wiring.Component):  # the ports of link v1's kernels
        width = 1
        operations = ("call",)
        i_stream: In(byte_stream(1))
        o_stream: Out(byte_stream(1))

        def elaborate(self, platform):
            return Module()

    with pytest.raises(TypeError, match=r"i_stream: In\(request_stream\(1\)\)"):
        LinkBridge([(1, OldPorts())], b"", timeout_cycles=10)


def test_bridge_without_kernels():
    dut = LinkBridge([], b"", max_payload=16, max_response=4, timeout_cycles=50)
    chunks = [ref_request(0, 1, opcode=OP_MANIFEST), ref_request(5, 0, b"x"),
              ref_request(0, 2, opcode=OP_COUNTERS)]
    got, _ = run(chunks, 3, dut=dut)
    assert [(r.status, r.payload) for r in got[:2]] == [
        (STATUS_OK, u32(0)), (STATUS_UNKNOWN_KERNEL, b"")]
    assert len(got[2].payload) == 4 * len(LINK_COUNTERS) == dut.counters_size


def test_open_message_counter():
    chunks = [
        ref_request(CRC1, 0, b"part", flags=FLAG_MORE),
        200,  # system frames are answered at once: let the call run first
        counters_request(),
        800,  # and counters are read as they are sent: let them go before the next call
        ref_request(CRC1, 1, b"rest"),
        200,
        counters_request(),
    ]
    got, _ = run(chunks, 4)
    assert parse_counters(got[1].payload)[1][CRC1]["open_message"] == 1
    assert parse_counters(got[3].payload)[1][CRC1]["open_message"] == 0
    assert got[2].payload == crc_le(b"partrest")


@pytest.mark.parametrize("backpressure", [0.0, 0.7])
def test_sync_ahead_forgets_the_window(backpressure):
    target = 0x12345678  # ahead of 3, and its replay slot is frame 0's
    chunks = [
        ref_request(ECHO, 0, b"\x01"),
        ref_request(ECHO, 1, b"\x02"),
        ref_request(ECHO, 0, b"\x01"),  # a replay being sent while the sync runs
        sync_request(target, nonce=55),
        ref_request(ECHO, target, b"\x03" * MAX_RESPONSE),  # into the slot being replayed
        ref_request(ECHO, 1, b"\x02"),  # executed before the sync: out of sequence now
        ref_request(ECHO, target - 1, b"\x02"),
        ref_request(ECHO, target, b"\x03" * MAX_RESPONSE),  # after the sync: a replay
        counters_request(),
    ]
    got, _ = run(chunks, len(chunks), seed=7, backpressure=backpressure)
    assert got[2] == got[0] and got[0].payload == b"\x01"
    assert (got[3].kernel, got[3].status, got[3].seq, got[3].payload) == (
        0, STATUS_OK, 55, u32(target))
    assert (got[4].status, got[4].seq, got[4].payload) == (
        STATUS_OK, target, b"\x03" * MAX_RESPONSE)
    for response, seq in ((got[5], 1), (got[6], target - 1)):
        assert (response.status, response.seq, response.payload) == (
            STATUS_OUT_OF_SEQUENCE, seq, u32(target + 1))
    assert got[7] == got[4]
    link, kernels = parse_counters(got[8].payload)
    assert (link["replays"], link["out_of_sequence"]) == (2, 2)
    assert kernels[ECHO]["beats_in"] == 2 + MAX_RESPONSE


@pytest.mark.parametrize("offset, moves", [
    (0, False), (-1, False), (-8, False), (1 << 31, False), ((1 << 31) + 1, False),
    (1, True), ((1 << 31) - 1, True),
])
def test_sync_moves_only_forward(offset, moves):
    expected = 2
    target = (expected + offset) & 0xFFFFFFFF
    after = target if moves else expected
    chunks = [
        ref_request(CRC1, 0, b"a"),
        ref_request(CRC1, 1, b"b"),
        sync_request(target, nonce=0xCAFEF00D),
        ref_request(0, 3, opcode=OP_MANIFEST),
        ref_request(CRC1, 1, b"b"),  # a replay only if nothing changed
        ref_request(CRC1, after, b"c"),
    ]
    got, _ = run(chunks, len(chunks))
    assert (got[2].kernel, got[2].status, got[2].seq, got[2].payload) == (
        0, STATUS_OK, 0xCAFEF00D, u32(after))
    assert got[3].payload == u32(after) + MANIFEST
    if moves:
        assert (got[4].status, got[4].payload) == (STATUS_OUT_OF_SEQUENCE, u32(after))
    else:
        assert got[4] == got[1]
    assert (got[5].status, got[5].seq, got[5].payload) == (STATUS_OK, after, crc_le(b"c"))


@pytest.mark.parametrize("size", [0, 2, 3])
def test_short_sync_is_a_bad_frame(size):
    chunks = [
        sync_request(100, nonce=4, size=size),
        ref_request(CRC1, 0, b"a"),  # nothing moved
        ref_request(0, 5, bytes.fromhex("6400000077"), opcode=OP_SYNC),  # the fifth is ignored
        ref_request(CRC1, 100, b"b"),
    ]
    got, _ = run(chunks, 4)
    assert [(r.kernel, r.status, r.seq, r.payload) for r in got] == [
        (0, STATUS_BAD_FRAME, 4, b""),
        (CRC1, STATUS_OK, 0, crc_le(b"a")),
        (0, STATUS_OK, 5, u32(100)),
        (CRC1, STATUS_OK, 100, crc_le(b"b")),
    ]


def test_sequence_numbers_wrap():
    top = 0xFFFFFFFE
    numbers = [top, top + 1, 0, 1]
    chunks = [sync_request(0x7FFFFFFF), sync_request(top)]  # a sync moves less than 2**31
    chunks += [ref_request(CRC4, seq & 0xFFFFFFFF, bytes([n] * 5))
               for n, seq in enumerate(numbers)]
    chunks += [
        ref_request(CRC4, 0xFFFFFFFF, bytes([1] * 5)),  # a replay across the wrap
        ref_request(CRC4, top - 1, b"x"),  # before the sync: out of sequence
        ref_request(0, 0, opcode=OP_MANIFEST),
        counters_request(),
    ]
    got, _ = run(chunks, len(chunks), backpressure=0.3)
    assert [r.payload for r in got[:2]] == [u32(0x7FFFFFFF), u32(top)]
    for n, seq in enumerate(numbers):
        response = got[2 + n]
        assert (response.status, response.seq, response.payload) == (
            STATUS_OK, seq & 0xFFFFFFFF, crc_le(bytes([n] * 5)))
    assert got[6] == got[3]
    assert (got[7].status, got[7].payload) == (STATUS_OUT_OF_SEQUENCE, u32(2))
    assert got[8].payload == u32(2) + MANIFEST
    link, kernels = parse_counters(got[9].payload)
    assert (link["replays"], link["out_of_sequence"]) == (1, 1)
    assert kernels[CRC4]["beats_in"] == 2 * len(numbers)  # 5 bytes: two beats each


def test_expected_number_reported_in_32_bits():
    target = 0x7EDCBA98
    chunks = [
        sync_request(target),
        ref_request(CRC1, 5, b"a"),
        ref_request(0, 1, opcode=OP_MANIFEST),
        ref_request(CRC1, target, b"a"),
        ref_request(CRC1, target + 2, b"a"),
    ]
    got, _ = run(chunks, len(chunks))
    assert (got[1].status, got[1].payload) == (STATUS_OUT_OF_SEQUENCE, u32(target))
    assert got[2].payload == u32(target) + MANIFEST
    assert (got[4].status, got[4].payload) == (STATUS_OUT_OF_SEQUENCE, u32(target + 1))


@pytest.mark.parametrize("kernel", [CRC1, CRC4])
def test_open_message_survives_sync(kernel):
    chunks = [
        ref_request(kernel, 0, b"abc", flags=FLAG_MORE),  # leaves a partial beat on CRC4
        sync_request(1000),
        ref_request(kernel, 1000, b"defgh"),
        counters_request(),
    ]
    got, _ = run(chunks, 4)
    assert [(r.status, r.payload) for r in got[:3]] == [
        (STATUS_OK, b""), (STATUS_OK, u32(1000)), (STATUS_OK, crc_le(b"abcdefgh"))]
    _, kernels = parse_counters(got[3].payload)
    assert kernels[kernel]["open_message"] == 0
    assert kernels[kernel]["beats_in"] == (8 if kernel == CRC1 else 2)


# ---- The kernel platform: operations, long responses, OP_RESET ----------------------------


def message_frames(kernel, seq, message, size, *, opcode=0):
    """``message`` as FLAG_MORE frames of ``size`` bytes and a last frame with the rest, numbered
    from ``seq``."""
    parts = [message[i:i + size] for i in range(0, len(message), size)] or [b""]
    return [ref_request(kernel, seq + n, part, opcode=opcode,
                        flags=FLAG_MORE if n < len(parts) - 1 else 0)
            for n, part in enumerate(parts)]


def continuations(kernel, seq, count):
    return [ref_request(kernel, seq + n, flags=FLAG_CONTINUE) for n in range(count)]


def whole_response(responses, frames):
    """The bytes of one response, from the responses to a message's ``frames`` frames and to the
    continuations after them, checking FLAG_MORE: never on a frame before the message's last,
    and set on the last frame's response and each continuation's exactly while more follows
    (a response with FLAG_MORE is full; after the one without it, continuations are empty)."""
    assert all(r.flags in (FLAG_RESPONSE, FLAG_RESPONSE | FLAG_MORE) for r in responses)
    assert all(len(r.payload) <= MAX_RESPONSE for r in responses)
    assert all(r.flags == FLAG_RESPONSE for r in responses[:frames - 1])
    tail = responses[frames - 1:]
    more = [bool(r.flags & FLAG_MORE) for r in tail]
    end = more.index(False)  # the response ends in this one
    assert more[end:] == [False] * (len(tail) - end)
    assert all(len(r.payload) == MAX_RESPONSE for r in tail[:end])
    assert all(r.payload == b"" for r in tail[end + 1:])
    return b"".join(r.payload for r in responses)


@pytest.mark.parametrize("idle, backpressure", [(0.0, 0.0), (0.3, 0.6)])
def test_operations_reach_the_kernel(idle, backpressure):
    chunks = [
        ref_request(OPECHO, 0, b"xy", opcode=0),
        ref_request(OPECHO, 1, b"", opcode=2),
        ref_request(OPECHO, 2, b"abc", opcode=1, flags=FLAG_MORE),
        ref_request(OPECHO, 3, b"de", opcode=1),
        ref_request(OPECHO, 4, b"zz", opcode=3),  # undeclared: nothing reaches the kernel
        ref_request(OPECHO, 5, b"zz", opcode=0x80),
        ref_request(CRC1, 6, b"zz", opcode=1),
        ref_request(CRC1, 7, b"zz", opcode=OP_RESET - 1),
        ref_request(OPECHO, 8, b"!", opcode=2),
        counters_request(),
    ]
    got, _ = run(chunks, len(chunks), seed=9, idle=idle, backpressure=backpressure)
    assert [r.status for r in got[:9]] == [STATUS_OK] * 4 + [STATUS_BAD_OPCODE] * 4 + [STATUS_OK]
    assert [r.seq for r in got[:9]] == list(range(9))
    assert got[0].payload == b"\x00xy" and got[1].payload == b"\x02"
    assert got[2].payload + got[3].payload == b"\x01abcde"
    assert all(r.payload == b"" for r in got[4:8])
    assert got[8].payload == b"\x02!"
    _, kernels = parse_counters(got[9].payload)
    assert kernels[OPECHO]["beats_in"] == 2 + 1 + 5 + 1
    assert kernels[CRC1]["beats_in"] == 0
    assert kernels[OPECHO]["open_message"] == 0


@pytest.mark.parametrize("kernel", [ECHO, SLOW, SLOW4])
@pytest.mark.parametrize("idle, backpressure", [(0.0, 0.0), (0.3, 0.6)])
def test_response_longer_than_max_response(kernel, idle, backpressure):
    message = random.Random(kernel).randbytes(50)
    chunks = message_frames(kernel, 0, message, 12)  # five frames
    chunks += continuations(kernel, 5, 5)
    chunks += [ref_request(kernel, 10, b"next"), counters_request()]
    got, _ = run(chunks, len(chunks), seed=10, idle=idle, backpressure=backpressure)
    assert [r.status for r in got[:11]] == [STATUS_OK] * 11
    assert [r.seq for r in got[:11]] == list(range(11))
    assert whole_response(got[:10], 5) == message
    if kernel != ECHO:
        # The slow kernel answers mostly after the message: continuations carry most of it.
        assert sum(bool(r.flags & FLAG_MORE) for r in got[4:10]) >= 2
    assert (got[10].flags, got[10].payload) == (FLAG_RESPONSE, b"next")
    _, kernels = parse_counters(got[11].payload)
    assert kernels[kernel]["open_message"] == 0
    assert kernels[kernel]["beats_out"] == kernels[kernel]["beats_in"]


@pytest.mark.parametrize("backpressure", [0.0, 0.7])
def test_retried_continuation_returns_the_same_bytes(backpressure):
    message = random.Random(11).randbytes(50)
    chunks = [
        ref_request(SLOW, 0, message),
        ref_request(SLOW, 1, flags=FLAG_CONTINUE),
        ref_request(SLOW, 1, flags=FLAG_CONTINUE),  # retried: replayed, not run again
        ref_request(SLOW, 0, message),  # the first frame retried
        ref_request(SLOW, 2, flags=FLAG_CONTINUE),
        ref_request(SLOW, 1, flags=FLAG_CONTINUE),
        ref_request(SLOW, 3, flags=FLAG_CONTINUE),
        ref_request(SLOW, 3, flags=FLAG_CONTINUE),
        ref_request(SLOW, 4, flags=FLAG_CONTINUE),
        counters_request(),
    ]
    got, _ = run(chunks, len(chunks), seed=12, backpressure=backpressure)
    assert got[2] == got[1] and got[3] == got[0] and got[5] == got[1] and got[7] == got[6]
    first = [got[0], got[1], got[4], got[6], got[8]]
    assert [r.seq for r in first] == list(range(5))
    assert all(r.status == STATUS_OK for r in first)
    assert whole_response(first, 1) == message
    assert [len(r.payload) for r in first] == [16, 16, 16, 2, 0]
    link, kernels = parse_counters(got[9].payload)
    assert link["replays"] == 4
    assert kernels[SLOW]["beats_in"] == kernels[SLOW]["beats_out"] == 50


def test_continuation_with_nothing_pending():
    chunks = [
        ref_request(CRC1, 0, flags=FLAG_CONTINUE),  # nothing ever ran
        ref_request(CRC1, 1, b"abc"),
        ref_request(CRC1, 2, flags=FLAG_CONTINUE),  # the response was whole
        ref_request(ECHO, 3, b"ab", flags=FLAG_MORE),
        ref_request(ECHO, 4, flags=FLAG_CONTINUE),  # a message is open: nothing pending
        ref_request(ECHO, 5, b"cd"),
        ref_request(ECHO, 6, b"x", flags=FLAG_CONTINUE),  # a continuation has no payload
        ref_request(9, 7, flags=FLAG_CONTINUE),
    ]
    got, _ = run(chunks, len(chunks), backpressure=0.3)
    assert [(r.status, r.flags, r.seq) for r in got] == [
        (STATUS_OK, FLAG_RESPONSE, 0), (STATUS_OK, FLAG_RESPONSE, 1),
        (STATUS_OK, FLAG_RESPONSE, 2), (STATUS_OK, FLAG_RESPONSE, 3),
        (STATUS_OK, FLAG_RESPONSE, 4), (STATUS_OK, FLAG_RESPONSE, 5),
        (STATUS_BAD_FRAME, FLAG_RESPONSE, 6), (STATUS_UNKNOWN_KERNEL, FLAG_RESPONSE, 7),
    ]
    assert [r.payload for r in got[:3]] == [b"", crc_le(b"abc"), b""]
    assert got[4].payload == b"" and got[3].payload + got[5].payload == b"abcd"
    assert got[6].payload == got[7].payload == b""


@pytest.mark.parametrize("kernel", [SLOW, SLOW4])
@pytest.mark.parametrize("backpressure", [0.0, 0.6])
def test_new_message_drops_abandoned_response(kernel, backpressure):
    rng = random.Random(13)
    first, second = rng.randbytes(50), rng.randbytes(40)
    chunks = [
        ref_request(kernel, 0, first),  # FLAG_MORE: the rest is abandoned
        ref_request(kernel, 1, b"fresh"),
        ref_request(kernel, 2, flags=FLAG_CONTINUE),
        ref_request(kernel, 3, second),  # abandoned in turn
        *message_frames(kernel, 4, b"0123456789", 4),  # a message over three frames
        *continuations(kernel, 7, 2),
        counters_request(),
    ]
    got, _ = run(chunks, len(chunks), seed=14, backpressure=backpressure)
    assert all(r.status == STATUS_OK for r in got[:9])
    assert (got[0].flags, got[0].payload) == (FLAG_RESPONSE | FLAG_MORE, first[:MAX_RESPONSE])
    assert (got[1].flags, got[1].payload) == (FLAG_RESPONSE, b"fresh")
    assert (got[2].flags, got[2].payload) == (FLAG_RESPONSE, b"")
    assert (got[3].flags, got[3].payload) == (FLAG_RESPONSE | FLAG_MORE, second[:MAX_RESPONSE])
    assert whole_response(got[4:9], 3) == b"0123456789"
    _, kernels = parse_counters(got[9].payload)
    # Every byte of the abandoned responses was taken from the kernel, and none went out.
    assert kernels[kernel]["beats_out"] == kernels[kernel]["beats_in"]
    assert kernels[kernel]["open_message"] == 0


@pytest.mark.parametrize("frame_size", [64, 12])
def test_kernel_error_on_a_long_response(frame_size):
    message = b"\xee" + random.Random(15).randbytes(40)
    chunks = message_frames(SLOW, 0, message, frame_size)
    frames = len(chunks)
    chunks += continuations(SLOW, frames, 4)
    chunks += [ref_request(SLOW, frames + 4, b"ok")]
    got, _ = run(chunks, len(chunks), seed=16, backpressure=0.4)
    assert whole_response(got[:-1], frames) == message
    # The frame that carries the response's last beat has the status; none before it.
    end = next(n for n, r in enumerate(got) if n >= frames - 1 and not r.flags & FLAG_MORE)
    assert got[end].payload
    assert [r.status for r in got[:-1]] == [
        STATUS_KERNEL_ERROR if n == end else STATUS_OK for n in range(len(got) - 1)]
    assert (got[-1].status, got[-1].payload) == (STATUS_OK, b"ok")


def test_reset_runs_exactly_once():
    chunks = [
        ref_request(COUNT, 0, b"a"),
        ref_request(COUNT, 1, b"b"),
        ref_request(COUNT, 2, opcode=OP_RESET),
        ref_request(COUNT, 2, opcode=OP_RESET),  # retried: replayed, not run again
        ref_request(COUNT, 3, b"c"),
        ref_request(COUNT, 2, opcode=OP_RESET),
        ref_request(COUNT, 4, b"d", flags=FLAG_MORE),
        ref_request(COUNT, 5, b"e"),
        ref_request(COUNT, 6, b"f"),
        counters_request(),
    ]
    got, _ = run(chunks, len(chunks), seed=17, idle=0.2, backpressure=0.5)
    assert all(r.status == STATUS_OK for r in got)
    assert [r.payload for r in got[:9]] == [
        b"\x01", b"\x02", b"", b"", b"\x01", b"", b"", b"\x02", b"\x03"]
    assert got[3] == got[2] and got[5] == got[2]
    link, _ = parse_counters(got[9].payload)
    assert link["replays"] == 2


@pytest.mark.parametrize("kernel", [CRC1, CRC4])
def test_reset_abandons_an_open_message(kernel):
    chunks = [
        ref_request(kernel, 0, b"abc", flags=FLAG_MORE),  # on CRC4 a partial beat is held
        ref_request(kernel, 1, opcode=OP_RESET),
        300,
        counters_request(),
        400,
        ref_request(kernel, 2, b"defgh"),
        ref_request(kernel, 3, b"x", flags=FLAG_MORE),
        ref_request(kernel, 4, b"yz"),
    ]
    got, _ = run(chunks, 6)
    assert [(r.status, r.flags, r.payload) for r in got[:2]] == [
        (STATUS_OK, FLAG_RESPONSE, b""), (STATUS_OK, FLAG_RESPONSE, b"")]
    assert parse_counters(got[2].payload)[1][kernel]["open_message"] == 0
    assert got[3].payload == crc_le(b"defgh")
    assert [r.payload for r in got[4:]] == [b"", crc_le(b"xyz")]


def test_reset_drops_a_pending_response():
    message = random.Random(18).randbytes(50)
    chunks = [
        ref_request(SLOW, 0, message),
        ref_request(SLOW, 1, opcode=OP_RESET),
        ref_request(SLOW, 2, flags=FLAG_CONTINUE),  # nothing pending after the reset
        ref_request(SLOW, 3, b"new"),
        ref_request(STUCK, 4, b"abc"),
        ref_request(STUCK, 5, opcode=OP_RESET),  # a stuck kernel's open message is cleared
        300,
        counters_request(),
    ]
    got, _ = run(chunks, 7, backpressure=0.3)
    assert [(r.status, r.flags, r.payload) for r in got[:6]] == [
        (STATUS_OK, FLAG_RESPONSE | FLAG_MORE, message[:MAX_RESPONSE]),
        (STATUS_OK, FLAG_RESPONSE, b""),
        (STATUS_OK, FLAG_RESPONSE, b""),
        (STATUS_OK, FLAG_RESPONSE, b"new"),
        (STATUS_KERNEL_TIMEOUT, FLAG_RESPONSE, b""),
        (STATUS_OK, FLAG_RESPONSE, b""),
    ]
    _, kernels = parse_counters(got[6].payload)
    assert kernels[STUCK]["open_message"] == 0


def test_random_long_traffic():
    # Calls to several kernels, each over frames of random sizes and with as many continuations
    # as its response could need, some frames retried: every response comes back whole.
    rng = random.Random(19)
    chunks, calls = [], []
    seq = 0
    count = 0
    for _ in range(10):
        kernel = rng.choice([ECHO, SLOW, SLOW4, COUNT, CRC4])
        message = rng.randbytes(rng.randrange(0, 60))
        if message[:1] == b"\xee":
            message = b"\x00" + message
        frames = message_frames(kernel, seq, message, rng.randrange(1, 13))
        n_cont = (len(message) + MAX_RESPONSE) // MAX_RESPONSE
        frames += continuations(kernel, seq + len(frames), n_cont)
        first = len(chunks)
        for frame in frames:
            chunks.append(frame)
            if rng.random() < 0.15:
                chunks.append(frame)
        numbers = list(range(seq, seq + len(frames)))
        seq += len(frames)
        if kernel == COUNT:
            count += 1
            expect = bytes([count])
        elif kernel == CRC4:
            expect = crc_le(message)
        else:
            expect = message
        calls.append((first, numbers, len(frames) - n_cont, expect))
    got, _ = run(chunks, len(chunks), seed=20, idle=0.3, backpressure=0.6)
    by_seq = {}
    for r in got:
        assert r.status == STATUS_OK
        assert by_seq.setdefault(r.seq, r) == r  # a retried frame gets the same response
    for _, numbers, frames, expect in calls:
        assert whole_response([by_seq[n] for n in numbers], frames) == expect
