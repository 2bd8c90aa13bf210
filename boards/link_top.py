"""The top-level design of an offload device: the link PHY, the link bridge and the kernels.

The same design is built three ways:

``"board"``
    for a real board: the UART PHY on the board's USB-UART pins, at the board's link rate;
``"bytes"``
    for the virtual board: the bridge's byte streams are the top's ports (``i_bytes``,
    ``o_bytes``), so Verilator's harness moves bytes without clocking a UART bit by bit;
``"pins"``
    for tests of the PHY: the UART's ``rx`` and ``tx`` are the top's ports.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import ClockDomain, Module
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.link.bridge import LinkBridge
from hdl.link.fifo import ByteFifo
from hdl.link.uart import UartRx, UartTx

__all__ = ["LinkTop", "MODES", "rx_fifo_depth"]

MODES = ("board", "bytes", "pins")


def rx_fifo_depth() -> int:
    """Bytes buffered after the UART receiver.

    A UART has no flow control, and the bridge holds its input off while both frame buffers
    wait for the executor (a slow kernel, or long responses going out). A frame's worth of
    buffer rides that out instead of overrunning the receiver.
    """
    return 512


class LinkTop(wiring.Component):
    """A device: link PHY, :class:`~hdl.link.bridge.LinkBridge` and kernels.

    Parameters
    ----------
    kernels : sequence of (int, wiring.Component)
        Kernel ids and kernels, as :class:`LinkBridge` takes them.
    manifest : bytes
        The manifest the system kernel answers with.
    clock_hz : int
        The frequency the design runs at (the board's clock).
    baud : int
        Link rate of the UART in ``"board"`` and ``"pins"`` modes.
    mode : str
        One of :data:`MODES`.
    uart : tuple of (str, int)
        Platform resource of the UART, in ``"board"`` mode.
    max_payload : int
        Largest request payload, in bytes.
    timeout_ms : float
        Silence after which a half-received frame is dropped.
    pll : bool
        In ``"board"`` mode, make the clock (``clock_hz``) from the board's oscillator with its
        PLL (:class:`boards.pll.PllClock`); otherwise the oscillator is the clock. The other
        modes take their clock from the harness.
    """

    def __init__(self, kernels: Sequence[tuple[int, wiring.Component]], manifest: bytes, *,
                 clock_hz: int, baud: int, mode: str = "board",
                 uart: tuple[str, int] = ("uart", 0), max_payload: int = 1024,
                 timeout_ms: float = 10.0, pll: bool = False):
        if mode not in MODES:
            raise ValueError(f"LinkTop mode must be one of {MODES}, not {mode!r}")
        if not isinstance(clock_hz, int) or clock_hz <= 0:
            raise ValueError(f"LinkTop clock_hz must be a positive integer, not {clock_hz!r}")
        if not isinstance(baud, int) or not 0 < baud * 4 <= clock_hz:
            raise ValueError(
                f"LinkTop baud must be positive and at most a quarter of the clock "
                f"({clock_hz} Hz), not {baud!r}"
            )
        self.mode = mode
        self.pll = pll
        self.uart = uart
        self.divisor = round(clock_hz / baud)
        self.clock_hz = clock_hz
        # A UART byte takes ten bits of at least four cycles: the bridge's CRCs take a quarter
        # of a byte a cycle (four cycles a byte, each way), at about a quarter of their logic.
        self.bridge = LinkBridge(list(kernels), manifest, max_payload=max_payload,
                                 timeout_cycles=max(1000, int(clock_hz * timeout_ms / 1000)),
                                 crc_bits=2)
        if mode == "bytes":
            members = {"i_bytes": In(stream.Signature(8)), "o_bytes": Out(stream.Signature(8))}
        elif mode == "pins":
            members = {"rx": In(1, init=1), "tx": Out(1, init=1)}
        else:
            members = {}
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        if self.mode == "bytes":
            wiring.connect(m, wiring.flipped(self.i_bytes), bridge.i_bytes)
            wiring.connect(m, bridge.o_bytes, wiring.flipped(self.o_bytes))
            return m

        if self.mode == "board" and self.pll:
            from .pll import PllClock

            for domain in PllClock.DOMAINS:  # defined here, driven by the PLL
                m.domains += ClockDomain(domain)
            m.submodules.clock = PllClock(self.clock_hz)
        m.submodules.uart_rx = rx = UartRx(self.divisor)
        m.submodules.uart_tx = tx = UartTx(self.divisor)
        m.submodules.rx_fifo = rx_fifo = ByteFifo(rx_fifo_depth())
        wiring.connect(m, rx.o_stream, rx_fifo.w_stream)
        wiring.connect(m, rx_fifo.r_stream, bridge.i_bytes)
        wiring.connect(m, bridge.o_bytes, tx.i_stream)
        if self.mode == "pins":
            m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        else:
            pins = platform.request(*self.uart, dir={"rx": "-", "tx": "-"})
            m.submodules.rx_pin = rx_pin = io.Buffer("i", pins.rx)
            m.submodules.tx_pin = tx_pin = io.Buffer("o", pins.tx)
            m.d.comb += [rx.rx.eq(rx_pin.i), tx_pin.o.eq(tx.tx)]
        return m
