"""8N1 UART physical layer: the byte stream of a board's link.

One start bit (low), eight data bits least significant first, one stop bit (high), at
``divisor`` clock cycles per bit. Neither side has flow control: the receiver holds one byte
for its consumer and overwrites it if the next byte completes before it was taken, so whatever
reads ``UartRx.o_stream`` must keep up with the line (the link bridge takes a byte per cycle
except while both its frame buffers are full).
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx"]

#: Fewest clock cycles per bit the PHY takes. The receiver samples a bit half a bit period
#: after the start edge it saw through a two-flop synchronizer; below four cycles per bit the
#: synchronizer delay and a one-cycle skew between the two clocks of a real link leave no
#: margin on either side of the sampling point.
MIN_DIVISOR = 4


def _check_divisor(cls: str, divisor) -> None:
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"{cls} divisor must be an integer, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(
            f"{cls} divisor must be at least {MIN_DIVISOR} clock cycles per bit, not {divisor!r}"
        )


class UartTx(wiring.Component):
    """8N1 UART transmitter.

    A byte is taken from ``i_stream`` whenever the transmitter is idle, and the next one may
    follow right after the previous stop bit: a byte takes exactly ``10 * divisor`` cycles.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (the clock frequency over the baud rate), at least
        ``MIN_DIVISOR``.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes to send.
    tx : ``Out(1)``
        The line, high when idle. Driven from a flip-flop.
    """

    def __init__(self, divisor: int):
        _check_divisor("UartTx", divisor)
        self.divisor = divisor
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()

        # Data then stop bit; shifted right with ones, so the line rests high afterwards.
        shreg = Signal(9)
        bits_left = Signal(range(11))
        timer = Signal(range(self.divisor))

        # The next byte is taken as the stop bit ends, so bytes follow with no idle time.
        idle = (bits_left == 0) | ((bits_left == 1) & (timer == 0))
        m.d.comb += self.i_stream.ready.eq(idle)
        with m.If(idle & self.i_stream.valid):
            m.d.sync += [
                shreg.eq(Cat(self.i_stream.payload, 1)),
                self.tx.eq(0),
                bits_left.eq(10),
                timer.eq(self.divisor - 1),
            ]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [
                    self.tx.eq(shreg[0]),
                    shreg.eq(Cat(shreg[1:], 1)),
                    bits_left.eq(bits_left - 1),
                    timer.eq(self.divisor - 1),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)

        return m


class UartRx(wiring.Component):
    """8N1 UART receiver.

    The line goes through a two-flop synchronizer. A falling edge starts a byte; the start bit
    is checked half a bit period later (a shorter low pulse is a glitch and is ignored) and each
    following bit is sampled a whole period after the previous one, in the middle of the bit. A
    byte whose stop bit is low (a framing error, or a break) is dropped, and the receiver waits
    for the line to go high before it looks for the next start edge.

    A received byte waits in ``o_stream`` until taken, or until the next byte's start bit has
    been checked: the byte is shifted in where it waits (no copy of it), so a byte not taken by
    then is lost.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (the clock frequency over the baud rate), at least
        ``MIN_DIVISOR``.

    Members
    -------
    rx : ``In(1)``
        The line, asynchronous to the clock.
    o_stream : ``Out(stream.Signature(8))``
        Received bytes.
    """

    def __init__(self, divisor: int):
        _check_divisor("UartRx", divisor)
        self.divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o_stream": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()

        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1, stages=2)

        timer = Signal(range(self.divisor))
        shreg = self.o_stream.payload
        bit = Signal(range(8))

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("WAIT_HIGH"):
                with m.If(line):
                    m.next = "IDLE"
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0), self.o_stream.valid.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], line)),
                        timer.eq(self.divisor - 1),
                        bit.eq(bit + 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.d.sync += self.o_stream.valid.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "WAIT_HIGH"

        return m
