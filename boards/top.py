"""Top-level designs that put a core between a board's pins, for measuring it.

A core synthesised on its own loses everything whose inputs are constant or whose outputs go
nowhere, and a core whose ports go straight to pins is timed through the I/O buffers instead of
through its own logic. :class:`PinTop` avoids both. Every input bit of the core comes from a
register of one long shift register fed serially from the UART's receive pin, so the core sees
independent registered inputs. Every output bit is XORed into one bit of a rotating accumulator
whose bit 0 drives the UART's transmit pin; because the accumulator is a ring, every output bit
reaches the pin, and Yosys can remove none of the core. Each of these paths is a single LUT, so
the harness is never the critical path: the fmax nextpnr reports is the core's.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Cat, Elaboratable, Module, Signal, Value, ValueCastable
from amaranth.lib import io, wiring

__all__ = ["KernelPinTop", "PinTop"]


class PinTop(Elaboratable):
    """A core with its inputs driven from one pin and its outputs folded into another.

    Parameters
    ----------
    core : Elaboratable
        The design under measurement; it becomes submodule ``core``.
    inputs : sequence of Value-castable
        The core's input ports. Each is driven from the shift register.
    outputs : sequence of Value-castable
        The core's output ports. Each bit is folded into the accumulator.
    uart : tuple[str, int]
        Name and number of the UART resource whose ``rx`` feeds the shift register and whose
        ``tx`` shows the accumulator. Every supported board has ``("uart", 0)``.
    """

    def __init__(
        self,
        core: Elaboratable,
        *,
        inputs: Sequence[Value | ValueCastable],
        outputs: Sequence[Value | ValueCastable],
        uart: tuple[str, int] = ("uart", 0),
    ):
        self.core = core
        self.inputs = [Value.cast(port) for port in inputs]
        self.outputs = [Value.cast(port) for port in outputs]
        if not self.inputs or not self.outputs:
            self._MustUse__silence = True  # a top that failed to construct is not unused
            raise ValueError("PinTop needs at least one input and one output port of the core")
        self.uart = uart

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = self.core

        uart = platform.request(*self.uart, dir={"rx": "-", "tx": "-"})
        m.submodules.rx_buffer = rx_buffer = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx_buffer = io.Buffer("o", uart.tx)

        rx = Signal()
        m.d.sync += rx.eq(rx_buffer.i)

        shift = Signal(sum(len(port) for port in self.inputs))
        m.d.sync += shift.eq(Cat(rx, shift[:-1]))
        offset = 0
        for port in self.inputs:
            m.d.comb += port.eq(shift[offset : offset + len(port)])
            offset += len(port)

        folded = Cat(*self.outputs)
        acc = Signal(len(folded))
        m.d.sync += acc.eq(Cat(acc[-1], acc[:-1]) ^ folded)
        m.d.comb += tx_buffer.o.eq(acc[0])

        return m


class KernelPinTop(PinTop):
    """An offload kernel between the board's pins (see :class:`PinTop`).

    The kernel's ``i_stream`` payload and ``valid`` and its ``o_stream.ready`` come from the
    shift register; its ``o_stream`` payload and ``valid`` and its ``i_stream.ready`` are folded
    to the pin, so the input-acceptance logic is kept and timed as well as the datapath.

    Parameters
    ----------
    kernel : wiring.Component
        A kernel with ``i_stream`` and ``o_stream`` ports (ARCHITECTURE.md, "A kernel").
    uart : tuple[str, int]
        As for :class:`PinTop`.
    """

    def __init__(self, kernel: wiring.Component, *, uart: tuple[str, int] = ("uart", 0)):
        for port in ("i_stream", "o_stream"):
            if not hasattr(kernel, port):
                self._MustUse__silence = True
                raise TypeError(f"KernelPinTop needs a kernel with an {port} port, not {kernel!r}")
        self.kernel = kernel
        super().__init__(
            kernel,
            inputs=[kernel.i_stream.payload, kernel.i_stream.valid, kernel.o_stream.ready],
            outputs=[kernel.o_stream.payload, kernel.o_stream.valid, kernel.i_stream.ready],
            uart=uart,
        )
