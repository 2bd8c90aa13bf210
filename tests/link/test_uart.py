# amaranth: UnusedElaboratable=no

import random

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from hdl.link.uart import UartRx, UartTx

from .streams import stream_recv, stream_send


class _Loopback(Elaboratable):
    def __init__(self, divisor):
        self.tx = UartTx(divisor)
        self.rx = UartRx(divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = self.tx
        m.submodules.rx = self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


@pytest.mark.parametrize("divisor", [4, 7])
def test_loopback(divisor):
    rng = random.Random(divisor)
    message = bytes([0x00, 0xFF, 0x55, 0xAA]) + rng.randbytes(28)
    dut = _Loopback(divisor)
    got = []

    async def source(ctx):
        await stream_send(ctx, dut.tx.i_stream, message, rng=rng, idle=0.3)

    async def sink(ctx):
        # The receiver has no flow control: take every byte as it comes.
        await stream_recv(ctx, dut.rx.o_stream, got, until=lambda out: len(out) == len(message),
                          cycles=12 * divisor * 2 * len(message))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert bytes(got) == message


def test_tx_back_to_back_timing():
    # Ten bit periods a byte, the next start bit right after the previous stop bit.
    divisor = 4
    dut = UartTx(divisor)
    line = []

    async def source(ctx):
        await stream_send(ctx, dut.i_stream, [0x00, 0xFF])

    async def probe(ctx):
        for _ in range(2 * 10 * divisor + 8):
            _, _, tx = await ctx.tick().sample(dut.tx)
            line.append(tx)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(probe)
    sim.run()
    start = line.index(0)
    bits = line[start:start + 20 * divisor:divisor]
    assert bits == [0] + [0] * 8 + [1] + [0] + [1] * 8 + [1]
    assert all(bit == 1 for bit in line[start + 20 * divisor:])


def _bits(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def test_rx_drops_framing_error_and_glitch():
    divisor = 6
    dut = UartRx(divisor)
    got = []
    # A glitch shorter than half a bit, a byte with a low stop bit followed by a long low
    # (a break), then a good byte.
    line = [1] * 10 + [0] * 2 + [1] * 20
    line += [b for bit in _bits(0x3C, stop=0) for b in [bit] * divisor] + [0] * 30 + [1] * 12
    line += [b for bit in _bits(0xA5) for b in [bit] * divisor] + [1] * 20

    async def driver(ctx):
        for bit in line:
            ctx.set(dut.rx, bit)
            await ctx.tick()

    async def sink(ctx):
        await stream_recv(ctx, dut.o_stream, got, cycles=len(line))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(sink)
    sim.run()
    assert got == [0xA5]


@pytest.mark.parametrize("cls", [UartRx, UartTx])
def test_divisor_checked(cls):
    with pytest.raises(TypeError, match="divisor must be an integer"):
        cls(4.0)
    with pytest.raises(ValueError, match="divisor must be at least 4"):
        cls(3)
