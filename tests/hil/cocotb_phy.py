"""cocotb testbench: a board's device top at pin level, its UART at the real baud divisor.

The host side is played bit by bit on ``rx`` and read bit by bit from ``tx``, so the PHY, the
receive FIFO, the bridge and a kernel are exercised exactly as on the board: first by this
file's own UART, in step with the device's clock, then by ``cocotbext-uart``'s (an independent
model) running 2% fast and 2% slow, as a host adapter's clock may.
"""

import os
import random

import cocotb
import google_crc32c
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, Timer

from hdl.link import protocol as p
from offload.link.codec import Frame, FrameSplitter, decode_frame, encode_frame
from offload.link.driver import Manifest


class UartHost:
    """The host's UART: 8N1, ``divisor`` clock cycles per bit."""

    def __init__(self, dut, divisor: int):
        self.dut = dut
        self.divisor = divisor
        self.splitter = FrameSplitter()
        self.frames: list[Frame] = []
        dut.rx.value = 1

    async def send(self, data: bytes) -> None:
        for byte in data:
            bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
            for bit in bits:
                self.dut.rx.value = bit
                await ClockCycles(self.dut.clk, self.divisor)

    async def receive_forever(self) -> None:
        while True:
            await FallingEdge(self.dut.tx)
            await ClockCycles(self.dut.clk, self.divisor // 2)
            assert int(self.dut.tx.value) == 0, "start bit did not hold to its middle"
            byte = 0
            for i in range(8):
                await ClockCycles(self.dut.clk, self.divisor)
                byte |= int(self.dut.tx.value) << i
            await ClockCycles(self.dut.clk, self.divisor)
            assert int(self.dut.tx.value) == 1, "no stop bit"
            for raw in self.splitter.feed(bytes([byte])):
                self.frames.append(decode_frame(raw))

    async def response(self, count: int, timeout_cycles: int) -> Frame:
        for _ in range(timeout_cycles // 100):
            if len(self.frames) >= count:
                return self.frames[count - 1]
            await ClockCycles(self.dut.clk, 100)
        raise AssertionError(f"no response {count} within {timeout_cycles} cycles")


@cocotb.test()
async def frames_both_ways(dut):
    divisor = int(os.environ["OFFLOAD_DIVISOR"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    host = UartHost(dut, divisor)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    cocotb.start_soon(host.receive_forever())
    # A byte takes 10 bit times each way; allow for the longest frame (the manifest) and more.
    wait = 10 * divisor * 600

    nonce = 0x89ABCDEF  # all four bytes of the sequence number go through and back
    await host.send(encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.OP_MANIFEST, nonce)))
    answer = await host.response(1, wait)
    assert (answer.kernel, answer.op, answer.seq) == (0, p.STATUS_OK, nonce)
    assert answer.flags & p.FLAG_RESPONSE
    manifest = Manifest.parse(answer.payload)
    assert manifest.link == p.LINK_VERSION
    crc = next(k for k in manifest.kernels if k["name"] == "crc32c")

    # Resynchronise as a host does, to a number with every byte set.
    seq = (manifest.expected_seq + 0x7F01FF02) & p.SEQ_MASK
    await host.send(encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.OP_SYNC, nonce + 1,
                                       seq.to_bytes(4, "little"))))
    answer = await host.response(2, wait)
    assert (answer.kernel, answer.op, answer.seq) == (0, p.STATUS_OK, nonce + 1)
    assert answer.payload == seq.to_bytes(4, "little")

    messages = [b"123456789", random.Random(1).randbytes(200)]
    for n, message in enumerate(messages, start=3):
        await host.send(encode_frame(Frame(crc["id"], p.OP_CALL, seq, message)))
        answer = await host.response(n, wait)
        assert (answer.kernel, answer.op, answer.seq) == (crc["id"], p.STATUS_OK, seq)
        assert answer.payload == google_crc32c.value(message).to_bytes(4, "little")
        seq += 1

    # A damaged frame is dropped without an answer; the next one is answered.
    damaged = bytearray(encode_frame(Frame(crc["id"], p.OP_CALL, seq, b"lost")))
    damaged[4] ^= 0x80 if damaged[4] != 0x80 else 0x40
    await host.send(bytes(damaged))
    await host.send(encode_frame(Frame(crc["id"], p.OP_CALL, seq, b"kept")))
    answer = await host.response(len(messages) + 3, wait)
    assert answer.seq == seq and answer.payload == google_crc32c.value(b"kept").to_bytes(4,
                                                                                     "little")
    assert len(host.frames) == len(messages) + 3


class FarEnd:
    """The host's UART as ``cocotbext-uart`` models it, at ``baud`` (in simulated time)."""

    def __init__(self, dut, baud: float, divisor: int):
        from cocotbext.uart import UartSink, UartSource

        self.dut, self.baud, self.divisor = dut, baud, divisor
        self.source, self.sink = UartSource(dut.rx, baud=baud), UartSink(dut.tx, baud=baud)
        self.splitter = FrameSplitter()
        self.frames: list[Frame] = []

    async def exchange(self, frame: Frame) -> Frame:
        """Send ``frame``; the next frame the device answers."""
        await self.source.write(encode_frame(frame))
        for _ in range(10 * self.divisor * 2000 // 100):
            for byte in self.sink.read_nowait():
                self.frames += [decode_frame(raw) for raw in self.splitter.feed(bytes([byte]))]
            if self.frames:
                return self.frames.pop(0)
            await ClockCycles(self.dut.clk, 100)
        raise AssertionError(f"no answer at {self.baud:,.0f} baud")


@cocotb.test()
async def frames_at_a_baud_two_percent_off(dut):
    """The far end runs at the link rate 2% fast, then 2% slow, both ways (``cocotbext-uart``'s
    source and sink): every frame still goes through and back intact."""
    divisor = int(os.environ["OFFLOAD_DIVISOR"])
    period_ns = 100  # a bit is divisor * 100 ns: 2% of it is a whole number of nanoseconds
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    nominal = 1e9 / (divisor * period_ns)
    nonce = 0x01020304
    for error in (+0.02, -0.02):
        host = FarEnd(dut, nominal * (1 + error), divisor)
        nonce += 1
        answer = await host.exchange(Frame(p.SYSTEM_KERNEL_ID, p.OP_MANIFEST, nonce))
        assert (answer.op, answer.seq) == (p.STATUS_OK, nonce), f"{error:+.0%}"
        manifest = Manifest.parse(answer.payload)
        crc = next(k for k in manifest.kernels if k["name"] == "crc32c")
        seq = (manifest.expected_seq + 0x10000) & p.SEQ_MASK
        nonce += 1
        answer = await host.exchange(Frame(p.SYSTEM_KERNEL_ID, p.OP_SYNC, nonce,
                                           seq.to_bytes(4, "little")))
        assert answer.payload == seq.to_bytes(4, "little"), f"{error:+.0%}"
        # Every byte value, both ways, at the mismatched rate.
        message = bytes(range(256)) + random.Random(error).randbytes(300)
        answer = await host.exchange(Frame(crc["id"], p.OP_CALL, seq, message))
        assert (answer.op, answer.seq) == (p.STATUS_OK, seq), f"{error:+.0%}"
        assert answer.payload == google_crc32c.value(message).to_bytes(4, "little")
        await Timer(20 * divisor * period_ns, unit="ns")  # the line idle before the next rate
