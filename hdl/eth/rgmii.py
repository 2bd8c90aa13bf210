"""RGMII adapter: RGMII pins to and from the GMII-like byte interface of :mod:`.mac`.

RGMII carries a GMII byte per clock cycle on four wires at double data rate: the low nibble
with the rising edge of the clock, the high nibble with the falling edge. The control wire
carries the data valid (``rx_dv`` / ``tx_en``) with the rising edge and valid XOR error with
the falling edge. At 1 Gbps the clocks run at 125 MHz. (10/100 Mbps, where RGMII sends each
nibble twice at 2.5/25 MHz, is not supported.)

:class:`Rgmii` has two implementations of the double data rate registers:

- with ``pins=None`` (simulation), the pins are members of the component and the DDR registers
  are plain flip-flops on both edges of the clocks (a falling-edge clock domain), which
  Verilator runs;
- with ``pins`` given (an ``eth_rgmii`` resource of amaranth-boards requested with
  ``dir="-"``, that is, with ``rx_clk``, ``rx_ctl``, ``rx_data``, ``tx_clk``, ``tx_ctl``,
  ``tx_data`` I/O ports), they are ``amaranth.lib.io.DDRBuffer`` (IDDRX1F/ODDRX1F on an
  ECP5), and ``rx_clk`` goes through an input ``Buffer``. This variant is elaborated by the
  tests but has not been run on a board.

Clocking. The receive side runs in ``rx_domain`` (``"eth_rx"``), which the parent defines and
clocks with this component's ``rx_clk`` output (the PHY's receive clock), for example::

    m.domains.eth_rx = ClockDomain("eth_rx")
    m.d.comb += ClockSignal("eth_rx").eq(rgmii.rx_clk)
    m.submodules.eth_rx_reset = ResetSynchronizer(ResetSignal("sync"), domain="eth_rx")

The GMII receive outputs are in that domain, so a :class:`~.mac.MacRx` behind this adapter goes
in it (``DomainRenamer("eth_rx")``). The transmit side runs in ``tx_domain`` (``"sync"``,
which must be 125 MHz), whose clock is forwarded on ``tx_clk`` with its edges aligned with the
data's: the PHY must add the 2 ns transmit clock delay (RGMII-ID, as most PHYs can by strap or
MDIO), or the board must. The receive side likewise expects the PHY to delay ``rx_clk`` (or the
trace to), so that its edges fall in the middle of the data.
"""

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Module, Mux, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Rgmii"]


class Rgmii(wiring.Component):
    """RGMII pins to and from a GMII-like byte interface, one byte a cycle at 1 Gbps.

    Receive: a byte sampled on the pins (low nibble at a rising edge of ``rx_clk``, high nibble
    at the next falling edge) comes out on ``rxd`` two rising edges later (the simulation
    implementation; the ``DDRBuffer`` one adds its own latency), with ``rx_dv`` the control wire
    at the rising edge and ``rx_er`` the XOR of the two samples.

    Transmit: ``tx_en``, ``tx_er``, ``txd`` sampled at a rising edge of the ``tx_domain`` clock
    are put on the pins from the next rising edge (low nibble, ``tx_en``) and falling edge (high
    nibble, ``tx_en ^ tx_er``).

    Parameters
    ----------
    pins : resource or None
        None for the simulation implementation (pins as members), or the requested
        ``eth_rgmii`` resource (``platform.request("eth_rgmii", 0, dir="-")``) for
        ``DDRBuffer`` I/O.
    rx_domain : str
        The receive clock domain, defined by the parent and clocked by ``rx_clk``.
    tx_domain : str
        The transmit clock domain (125 MHz), defined elsewhere.

    Members
    -------
    rx_clk : ``Out(1)``
        The PHY's receive clock, for the parent to clock ``rx_domain`` with.
    rx_dv, rx_er : ``Out(1)``; rxd : ``Out(8)``
        GMII receive side, in ``rx_domain``.
    tx_en, tx_er : ``In(1)``; txd : ``In(8)``
        GMII transmit side, in ``tx_domain``.
    rgmii_rx_clk, rgmii_rx_ctl : ``In(1)``; rgmii_rxd : ``In(4)``
        The receive pins (simulation implementation only).
    rgmii_tx_clk, rgmii_tx_ctl : ``Out(1)``; rgmii_txd : ``Out(4)``
        The transmit pins (simulation implementation only).
    """

    def __init__(self, pins=None, *, rx_domain: str = "eth_rx", tx_domain: str = "sync"):
        self._pins = pins
        self._rx_domain = rx_domain
        self._tx_domain = tx_domain
        members = {
            "rx_clk": Out(1), "rx_dv": Out(1), "rx_er": Out(1), "rxd": Out(8),
            "tx_en": In(1), "tx_er": In(1), "txd": In(8),
        }
        if pins is None:
            members.update({
                "rgmii_rx_clk": In(1), "rgmii_rx_ctl": In(1), "rgmii_rxd": In(4),
                "rgmii_tx_clk": Out(1), "rgmii_tx_ctl": Out(1), "rgmii_txd": Out(4),
            })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        if self._pins is None:
            self._sim_ddr(m)
        else:
            self._io_ddr(m)
        return m

    def _sim_ddr(self, m: Module) -> None:
        rx, tx = self._rx_domain, self._tx_domain
        # Receive: both edges of rx_clk.
        rx_neg = f"{rx}_rgmii_neg"
        cd_rx_neg = ClockDomain(rx_neg, clk_edge="neg", reset_less=True, local=True)
        m.domains += cd_rx_neg
        m.d.comb += [self.rx_clk.eq(self.rgmii_rx_clk), cd_rx_neg.clk.eq(self.rgmii_rx_clk)]
        lo, ctl_rise = Signal(4), Signal()
        hi, ctl_fall = Signal(4), Signal()
        m.d[rx] += [lo.eq(self.rgmii_rxd), ctl_rise.eq(self.rgmii_rx_ctl)]
        m.d[rx_neg] += [hi.eq(self.rgmii_rxd), ctl_fall.eq(self.rgmii_rx_ctl)]
        # At the next rising edge, lo and the hi after it are one byte.
        m.d[rx] += [
            self.rxd.eq(Cat(lo, hi)),
            self.rx_dv.eq(ctl_rise),
            self.rx_er.eq(ctl_rise ^ ctl_fall),
        ]

        # Transmit: a byte registered at a rising edge, its high half again at the falling
        # edge after, each half on the pins for its half cycle.
        tx_neg = f"{tx}_rgmii_neg"
        cd_tx_neg = ClockDomain(tx_neg, clk_edge="neg", reset_less=True, local=True)
        m.domains += cd_tx_neg
        clk = ClockSignal(tx)
        m.d.comb += cd_tx_neg.clk.eq(clk)
        byte, en, ctl2 = Signal(8), Signal(), Signal()
        m.d[tx] += [byte.eq(self.txd), en.eq(self.tx_en), ctl2.eq(self.tx_en ^ self.tx_er)]
        hi_out, ctl_out = Signal(4), Signal()
        m.d[tx_neg] += [hi_out.eq(byte[4:]), ctl_out.eq(ctl2)]
        m.d.comb += [
            self.rgmii_txd.eq(Mux(clk, byte[:4], hi_out)),
            self.rgmii_tx_ctl.eq(Mux(clk, en, ctl_out)),
            self.rgmii_tx_clk.eq(clk),
        ]

    def _io_ddr(self, m: Module) -> None:
        rx, tx = self._rx_domain, self._tx_domain
        pins = self._pins
        m.submodules.rx_clk_buf = rx_clk = io.Buffer("i", pins.rx_clk)
        m.d.comb += self.rx_clk.eq(rx_clk.i)
        m.submodules.rx_data_buf = rx_data = io.DDRBuffer("i", pins.rx_data, i_domain=rx)
        m.submodules.rx_ctl_buf = rx_ctl = io.DDRBuffer("i", pins.rx_ctl, i_domain=rx)
        # i[0] is sampled at a rising edge, i[1] at the falling edge after it.
        m.d[rx] += [
            self.rxd.eq(Cat(rx_data.i[0], rx_data.i[1])),
            self.rx_dv.eq(rx_ctl.i[0]),
            self.rx_er.eq(rx_ctl.i[0] ^ rx_ctl.i[1]),
        ]

        m.submodules.tx_data_buf = tx_data = io.DDRBuffer("o", pins.tx_data, o_domain=tx)
        m.submodules.tx_ctl_buf = tx_ctl = io.DDRBuffer("o", pins.tx_ctl, o_domain=tx)
        m.submodules.tx_clk_buf = tx_clk = io.DDRBuffer("o", pins.tx_clk, o_domain=tx)
        m.d.comb += [
            tx_data.o[0].eq(self.txd[:4]),
            tx_data.o[1].eq(self.txd[4:]),
            tx_ctl.o[0].eq(self.tx_en),
            tx_ctl.o[1].eq(self.tx_en ^ self.tx_er),
            tx_clk.o[0].eq(1),
            tx_clk.o[1].eq(0),
        ]
