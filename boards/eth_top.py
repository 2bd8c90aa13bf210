"""The top-level design of an offload device whose link is UDP over Gigabit Ethernet.

The parts, each tested on its own, are put together in three clock domains::

    pins -> Rgmii -> MacRx ................................ eth_rx (the PHY's rx_clk, 125 MHz)
                       |
                       | AsyncFIFO (received frames)
                       v
                 UdpEndpoint -> MacTx -> Rgmii -> pins .... eth_tx (the PLL, 125 MHz)
                   |      ^
     AsyncFIFO     |      |  AsyncFIFO
     (datagrams)   v      |  (reply payloads)
           DatagramFrames   FramesDatagram ................ sync (the core, ``core_hz``)
                   |      ^
                   v      |
                   LinkBridge + kernels

The UDP endpoint runs in ``eth_tx``, beside the transmitting MAC it feeds, rather than in
``eth_rx``: its clock comes from the FPGA's PLL and runs whether or not the PHY has a link, so
the reply path from the core never waits on a clock that may be stopped. Each crossing is an
``amaranth.lib.fifo.AsyncFIFO`` of :data:`CROSSING_DEPTH` bytes, with a two-entry register
stage (:class:`_Skid`) on each 125 MHz side, so that no combinational path runs from one
component's ``valid``/``ready`` logic through a FIFO's pointer logic into another's. The MAC
receiver stores whole frames before it forwards them, so the crossings need only be shallow:
when the core (slower than the line) holds a datagram back, the UDP endpoint holds its input
back and the receiver's packet buffer takes the frames that keep coming (and drops whole frames
when it is full).

Two modes:

``"board"``
    the Colorlight 5A-75B (or another board with an ``eth_rgmii`` resource and an ECP5): RGMII
    through the ECP5's DDR registers, ``eth_tx`` and ``sync`` from the 25 MHz oscillator
    through one EHXPLLL (two outputs of one VCO), the PHY's reset held deasserted and its MDIO
    left alone (the PHY runs on its strapped defaults);
``"sim"``
    for a testbench: the RGMII pins are the top's ports (``rgmii_*``, as :class:`Rgmii`'s
    simulation implementation has them), ``eth_tx`` is clocked and reset from the ports
    ``eth_tx_clk`` and ``eth_tx_rst``, ``sync`` from ``clk`` and ``rst``; no PLL. (``tb_txc``
    is an unused input for the testbench's delayed transmit clock.)
``"gmii"``
    for the virtual Ethernet board (``sim/udp_board.py``): the MACs' GMII side is the top's
    ports (``gmii_*``, a byte a cycle), without the RGMII DDR adapter; ``eth_rx`` and ``eth_tx``
    are clocked from ``clk`` (one clock for the harness to run), and everything else, the
    crossings included, is the board's gateware.

``eth_rx`` is reset from the others' reset through a :class:`ResetSynchronizer` on its own clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from amaranth.hdl import (
    ClockDomain,
    ClockSignal,
    Const,
    DomainRenamer,
    Elaboratable,
    Module,
    ResetSignal,
    Signal,
)
from amaranth.lib import fifo, io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from hdl.eth.link import DatagramFrames, FramesDatagram
from hdl.eth.mac import MacRx, MacTx
from hdl.eth.rgmii import Rgmii
from hdl.eth.udp import UdpEndpoint
from hdl.link import protocol as p
from hdl.link.bridge import LinkBridge

from .pll import PllError, PllSettings, ehxplll, pll_settings

__all__ = ["ETH_HZ", "EthLinkTop", "MODES", "eth_pll_settings"]

MODES = ("board", "sim", "gmii")

#: The RGMII clocks at 1 Gbps.
ETH_HZ = 125_000_000

#: Depth of each clock-domain crossing FIFO (entries of one byte and its flags). Deep enough
#: for a byte a cycle across the Gray-code pointers' synchronisers; shallow, because the FIFO's
#: read (a pointer increment, then a LUT RAM read) is a 125 MHz path, one LUT RAM deep at 16.
CROSSING_DEPTH = 16


def eth_pll_settings(fin: int, core_hz: int) -> tuple[PllSettings, int]:
    """The ECP5 EHXPLLL settings that make :data:`ETH_HZ` (on ``CLKOS``) and ``core_hz`` (on
    ``CLKOS2``) from ``fin``: those :func:`boards.pll.pll_settings` finds for 125 MHz, and the
    divider of the same VCO that gives ``core_hz``.

    Raises
    ------
    PllError
        ``core_hz`` is not the VCO's frequency divided by a whole number from 1 to 128.
    """
    settings = pll_settings("ecp5", fin, ETH_HZ)
    div = settings.vco_hz / Fraction(core_hz)
    if div.denominator != 1 or not 1 <= div <= 128:
        raise PllError(f"the ECP5 PLL making {ETH_HZ / 1e6:g} MHz from {fin / 1e6:g} MHz (VCO "
                       f"{float(settings.vco_hz) / 1e6:g} MHz) cannot also make exactly "
                       f"{core_hz / 1e6:g} MHz: choose the VCO divided by 1 to 128")
    return settings, int(div)


def _check_address(name: str, value, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"EthLinkTop {name} must be an integer, not {value!r}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"EthLinkTop {name} must fit in {bits} bits, not {value!r}")


class _Skid(Elaboratable):
    """A two-entry stream register (a skid buffer) of ``width`` bits: every output of it is a
    flip-flop (``i_ready`` too), so it cuts the combinational paths through ``valid`` and
    ``ready`` between the two sides. A beat a cycle in and out."""

    def __init__(self, width: int):
        self.i_valid, self.i_ready, self.i_data = Signal(), Signal(), Signal(width)
        self.o_valid, self.o_ready, self.o_data = Signal(), Signal(), Signal(width)

    def elaborate(self, platform):
        m = Module()
        skid_valid, skid_data = Signal(), Signal(len(self.i_data))
        m.d.comb += self.i_ready.eq(~skid_valid)
        with m.If(self.o_ready | ~self.o_valid):  # the output register is free this cycle
            with m.If(skid_valid):
                m.d.sync += [self.o_valid.eq(1), self.o_data.eq(skid_data), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o_valid.eq(self.i_valid), self.o_data.eq(self.i_data)]
        with m.Elif(self.i_valid & ~skid_valid):  # the output is held: into the skid
            m.d.sync += [skid_valid.eq(1), skid_data.eq(self.i_data)]
        return m


def _crossing(m: Module, name: str, source, sink, *, w_domain: str, r_domain: str,
              skid: str = "", depth: int = CROSSING_DEPTH) -> fifo.AsyncFIFO:
    """``source`` (a stream in ``w_domain``) to ``sink`` (a stream in ``r_domain``) through an
    AsyncFIFO, with a :class:`_Skid` on each side named in ``skid`` (``"w"``, ``"r"``), in that
    side's domain, so that the FIFO's pointer logic (a Gray-code compare, a LUT RAM read) and
    the stream's ``valid``/``ready`` logic are not one combinational path. The payload layouts
    of the two are the same bits, so the FIFO's word is the payload's value."""
    width = len(source.payload.as_value())
    assert width == len(sink.payload.as_value())
    m.submodules[name] = cross = fifo.AsyncFIFO(width=width, depth=depth,
                                                w_domain=w_domain, r_domain=r_domain)
    w_valid, w_ready, w_data = source.valid, source.ready, source.payload.as_value()
    r_valid, r_ready, r_data = sink.valid, sink.ready, sink.payload.as_value()
    if "w" in skid:
        m.submodules[f"{name}_w_skid"] = buf = DomainRenamer(w_domain)(_Skid(width))
        m.d.comb += [buf.i_valid.eq(w_valid), w_ready.eq(buf.i_ready), buf.i_data.eq(w_data)]
        w_valid, w_ready, w_data = buf.o_valid, buf.o_ready, buf.o_data
    if "r" in skid:
        m.submodules[f"{name}_r_skid"] = buf = DomainRenamer(r_domain)(_Skid(width))
        m.d.comb += [r_valid.eq(buf.o_valid), buf.o_ready.eq(r_ready), r_data.eq(buf.o_data)]
        r_valid, r_ready, r_data = buf.i_valid, buf.i_ready, buf.i_data
    m.d.comb += [
        cross.w_data.eq(w_data),
        cross.w_en.eq(w_valid),
        w_ready.eq(cross.w_rdy),
        r_data.eq(cross.r_data),
        r_valid.eq(cross.r_rdy),
        cross.r_en.eq(r_ready),
    ]
    return cross


class EthLinkTop(wiring.Component):
    """A device: RGMII, Ethernet MAC, UDP endpoint, :class:`~hdl.link.bridge.LinkBridge` and
    kernels.

    Parameters
    ----------
    kernels : sequence of (int, wiring.Component)
        Kernel ids and kernels, as :class:`LinkBridge` takes them.
    manifest : bytes
        The manifest the system kernel answers with.
    mac : int
        The device's MAC address, 48 bits, first byte on the wire most significant.
    ip : int
        The device's IPv4 address, 32 bits.
    port : int
        The UDP port the link listens on and replies from.
    core_hz : int
        The frequency of ``sync`` (the bridge and the kernels). In ``"board"`` mode the PLL
        makes it from the same VCO as 125 MHz (see :func:`eth_pll_settings`).
    mode : str
        One of :data:`MODES`.
    max_payload, max_response : int
        Largest request and response payloads, in bytes (for a device on UDP,
        ``protocol.UDP_MAX_PAYLOAD`` and ``UDP_MAX_RESPONSE``: frames that fill a datagram).
    timeout_ms : float
        Time after which a kernel call that makes no progress is given up.
    resource : tuple of (str, int)
        The platform's RGMII resource, in ``"board"`` mode.

    Members (``"sim"`` mode)
    ------------------------
    rgmii_rx_clk, rgmii_rx_ctl : ``In(1)``; rgmii_rxd : ``In(4)``
        The receive pins; ``rgmii_rx_clk`` clocks ``eth_rx``.
    rgmii_tx_clk, rgmii_tx_ctl : ``Out(1)``; rgmii_txd : ``Out(4)``
        The transmit pins; ``rgmii_tx_clk`` is ``eth_tx``'s clock.
    eth_tx_clk, eth_tx_rst : ``In(1)``
        The clock and reset of ``eth_tx`` (125 MHz).
    tb_txc : ``In(1)``
        Not used by the design: a testbench drives it with ``eth_tx_clk`` delayed by 2 ns (as
        an RGMII-ID PHY delays the transmit clock) and samples the transmit pins with it.
    """

    def __init__(self, kernels: Sequence[tuple[int, wiring.Component]], manifest: bytes, *,
                 mac: int, ip: int, port: int, core_hz: int, mode: str = "board",
                 max_payload: int = p.MAX_PAYLOAD, max_response: int = p.MAX_RESPONSE,
                 timeout_ms: float = 10.0,
                 resource: tuple[str, int] = ("eth_rgmii", 0)):
        if mode not in MODES:
            raise ValueError(f"EthLinkTop mode must be one of {MODES}, not {mode!r}")
        _check_address("mac", mac, 48)
        if mac >> 40 & 1:
            raise ValueError(f"EthLinkTop mac must be a unicast address (first byte even), "
                             f"not {mac:#014x}")
        _check_address("ip", ip, 32)
        _check_address("port", port, 16)
        if port == 0:
            raise ValueError("EthLinkTop port must be from 1 to 65535, not 0")
        if not isinstance(core_hz, int) or isinstance(core_hz, bool) or core_hz <= 0:
            raise ValueError(f"EthLinkTop core_hz must be a positive integer, not {core_hz!r}")
        self.mode = mode
        self.mac, self.ip, self.port = mac, ip, port
        self.core_hz = core_hz
        self.resource = resource
        self.bridge = LinkBridge(list(kernels), manifest, max_payload=max_payload,
                                 max_response=max_response,
                                 timeout_cycles=max(1000, int(core_hz * timeout_ms / 1000)),
                                 framing="frames")
        self.mac_rx = MacRx(mac)
        self.mac_tx = MacTx()
        self.udp = UdpEndpoint(mac, ip, port, max_datagram=p.MAX_DATAGRAM)
        self.datagram_frames = DatagramFrames()
        self.frames_datagram = FramesDatagram(max_datagram=p.MAX_DATAGRAM)
        members = {}
        if mode == "sim":
            members = {
                "rgmii_rx_clk": In(1), "rgmii_rx_ctl": In(1), "rgmii_rxd": In(4),
                "rgmii_tx_clk": Out(1), "rgmii_tx_ctl": Out(1), "rgmii_txd": Out(4),
                "eth_tx_clk": In(1), "eth_tx_rst": In(1),
                "tb_txc": In(1),
            }
        elif mode == "gmii":
            members = {
                "gmii_rx_dv": In(1), "gmii_rx_er": In(1), "gmii_rxd": In(8),
                "gmii_tx_en": Out(1), "gmii_txd": Out(8),
            }
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.domains.eth_rx = ClockDomain("eth_rx")
        m.domains.eth_tx = ClockDomain("eth_tx")

        if self.mode == "gmii":
            # One clock: the harness's. The crossings stay, as on the board.
            m.d.comb += [
                ClockSignal("eth_tx").eq(ClockSignal("sync")),
                ResetSignal("eth_tx").eq(ResetSignal("sync")),
                ClockSignal("eth_rx").eq(ClockSignal("sync")),
            ]
            m.submodules.eth_rx_reset = ResetSynchronizer(ResetSignal("sync"), domain="eth_rx")
            phy_rx = self.gmii_rx_dv, self.gmii_rx_er, self.gmii_rxd
            phy_tx = self.gmii_tx_en, Signal(name="gmii_tx_er"), self.gmii_txd
        else:
            phy_rx, phy_tx = self._rgmii(m, platform)
        self._link(m, phy_rx, phy_tx)
        return m

    def _rgmii(self, m: Module, platform):
        """The RGMII adapter, its pins, and in ``"board"`` mode the PLL and resets; the MACs'
        side of it, ``(rx_dv, rx_er, rxd)`` and ``(tx_en, tx_er, txd)``."""
        if self.mode == "sim":
            m.submodules.rgmii = rgmii = Rgmii(rx_domain="eth_rx", tx_domain="eth_tx")
            m.d.comb += [
                ClockSignal("eth_tx").eq(self.eth_tx_clk),
                ResetSignal("eth_tx").eq(self.eth_tx_rst),
                rgmii.rgmii_rx_clk.eq(self.rgmii_rx_clk),
                rgmii.rgmii_rx_ctl.eq(self.rgmii_rx_ctl),
                rgmii.rgmii_rxd.eq(self.rgmii_rxd),
                self.rgmii_tx_clk.eq(rgmii.rgmii_tx_clk),
                self.rgmii_tx_ctl.eq(rgmii.rgmii_tx_ctl),
                self.rgmii_txd.eq(rgmii.rgmii_txd),
            ]
            # ``sync`` is left to the harness (``clk``, ``rst``).
            rx_reset = ResetSignal("eth_tx")
        else:
            pins = platform.request(*self.resource, dir="-")
            m.submodules.rgmii = rgmii = Rgmii(pins, rx_domain="eth_rx", tx_domain="eth_tx")
            # The PHY out of reset (rst is active low: PinsN), its management bus idle.
            m.submodules.phy_rst = phy_rst = io.Buffer("o", pins.rst)
            m.submodules.phy_mdc = phy_mdc = io.Buffer("o", pins.mdc)
            m.d.comb += [phy_rst.o.eq(0), phy_mdc.o.eq(0)]
            m.domains.sync = ClockDomain("sync")
            locked = self._pll(m, platform)
            m.submodules.eth_tx_reset = ResetSynchronizer(~locked, domain="eth_tx")
            m.submodules.sync_reset = ResetSynchronizer(~locked, domain="sync")
            # On the pin: the net names of the clocks after synthesis are Yosys's choice.
            platform.add_clock_constraint(pins.rx_clk.io, ETH_HZ)
            rx_reset = ~locked
        m.d.comb += ClockSignal("eth_rx").eq(rgmii.rx_clk)
        m.submodules.eth_rx_reset = ResetSynchronizer(rx_reset, domain="eth_rx")
        return (rgmii.rx_dv, rgmii.rx_er, rgmii.rxd), (rgmii.tx_en, rgmii.tx_er, rgmii.txd)

    def _link(self, m: Module, phy_rx, phy_tx) -> None:
        """The MACs, the UDP endpoint, the crossings, the link adapters and the bridge, between
        the PHY's receive side ``(rx_dv, rx_er, rxd)`` and its transmit side
        ``(tx_en, tx_er, txd)``, a byte a cycle in ``eth_rx`` and ``eth_tx``."""
        # eth_rx: the receiving MAC.
        m.submodules.mac_rx = mac_rx = DomainRenamer("eth_rx")(self.mac_rx)
        m.d.comb += [mac_rx.rx_dv.eq(phy_rx[0]), mac_rx.rx_er.eq(phy_rx[1]),
                     mac_rx.rxd.eq(phy_rx[2])]
        # eth_tx: the UDP endpoint and the transmitting MAC.
        m.submodules.udp = DomainRenamer("eth_tx")(self.udp)
        m.submodules.mac_tx = mac_tx = DomainRenamer("eth_tx")(self.mac_tx)
        wiring.connect(m, self.udp.o_frame, self.mac_tx.i_stream)
        m.d.comb += [phy_tx[0].eq(mac_tx.tx_en), phy_tx[1].eq(Const(0)),
                     phy_tx[2].eq(mac_tx.txd)]
        # sync: the link adapters, the bridge and the kernels.
        m.submodules.datagram_frames = rx_frames = self.datagram_frames
        m.submodules.frames_datagram = tx_frames = self.frames_datagram
        m.submodules.bridge = bridge = self.bridge
        wiring.connect(m, rx_frames.o_stream, bridge.i_frames)
        wiring.connect(m, bridge.o_frames, tx_frames.i_stream)

        # Skids on the 125 MHz sides, whose valid/ready logic (the MACs', the endpoint's)
        # would otherwise be one path with the FIFOs' pointer compares and LUT RAM reads.
        _crossing(m, "rx_frames_cdc", self.mac_rx.o_stream, self.udp.i_frame,
                  w_domain="eth_rx", r_domain="eth_tx", skid="wr")
        _crossing(m, "rx_datagram_cdc", self.udp.o_datagram, rx_frames.i_stream,
                  w_domain="eth_tx", r_domain="sync", skid="w")
        _crossing(m, "tx_datagram_cdc", tx_frames.o_stream, self.udp.i_datagram,
                  w_domain="sync", r_domain="eth_tx", skid="r")

    def _pll(self, m: Module, platform) -> Signal:
        """The EHXPLLL: the oscillator in, ``eth_tx`` on CLKOS, ``sync`` on CLKOS2. Returns
        its lock."""
        family = str(platform.family).lower()
        if family != "ecp5":
            raise PllError(f"EthLinkTop makes its clocks with an ECP5 PLL, not an {family} one")
        fin = int(platform.default_clk_frequency)
        settings, core_div = eth_pll_settings(fin, self.core_hz)
        pin = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", pin)
        locked = Signal(name="pll_locked")
        # ``keep``: Yosys names each clock's net after these, which the constraints name.
        eth_clk = Signal(name="pll_eth_tx_clk", attrs={"keep": 1})
        core_clk = Signal(name="pll_core_clk", attrs={"keep": 1})
        m.submodules.pll = ehxplll(settings, fin, clk_buf.i, locked, (eth_clk, ETH_HZ),
                                   (core_clk, self.core_hz, core_div))
        m.d.comb += [ClockSignal("eth_tx").eq(eth_clk), ClockSignal("sync").eq(core_clk)]
        # nextpnr also derives both from the oscillator's constraint through the PLL's dividers.
        platform.add_clock_constraint(eth_clk, ETH_HZ)
        platform.add_clock_constraint(core_clk, self.core_hz)
        return locked
