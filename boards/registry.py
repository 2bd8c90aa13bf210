"""The open boards offload builds bitstreams for.

Each board is one :class:`Board` record on top of its ``amaranth-boards`` platform: the FPGA
family (which selects the YoWASP tools), the board's oscillator, the pins wired to the board's
USB-UART (the link to the host) and the baud rate the link runs at, and the clock frequency a
measurement build is constrained to so that nextpnr optimises for speed rather than for the slow
board oscillator.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from amaranth.build import Platform
from amaranth_boards.colorlight_5a75b_r7_0 import Colorlight_5A75B_R70Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform
from amaranth_boards.versa_ecp5 import VersaECP5Platform

from hdl.errors import OffloadError

__all__ = ["BOARDS", "Board", "BoardError", "ETH_BOARDS", "EthBoard", "FAMILIES", "get_board",
           "link_rates"]

#: FPGA families the build flow knows, by the name ``sim.toolchain.yowasp_env`` takes.
FAMILIES = ("ice40", "ecp5")


class BoardError(OffloadError, ValueError):
    """A board name or board option that offload does not support.

    Also a ``ValueError``, which it was before :class:`OffloadError` was its root.
    """


@dataclass(frozen=True)
class Board:
    """One supported board.

    Members
    -------
    name : str
        The name users type (``offload build --board NAME``).
    platform : type[Platform]
        The ``amaranth-boards`` platform class.
    uart : tuple[str, int]
        Name and number of the platform resource wired to the USB-UART.
    link_baud : int
        Baud rate of the host link on that UART.
    target_mhz : float
        Clock constraint of a kernel measurement build (see :mod:`boards.build`).
    pll_hz : tuple of int
        Clocks the board's PLL makes for a device (see :mod:`boards.pll`), besides the
        oscillator; :meth:`device_hz` picks one for a link rate.
    fallback_baud : int
        The rate a device is built at when it cannot meet the clock of :attr:`link_baud`
        (``offload build`` without ``--baud``), run from the oscillator. A host that is not
        told the rate tries :attr:`link_baud`, then this.
    """

    #: What the host link is: a UART here, UDP on an :class:`EthBoard`.
    link: ClassVar[str] = "uart"

    name: str
    platform: type[Platform]
    uart: tuple[str, int]
    link_baud: int
    target_mhz: float
    pll_hz: tuple[int, ...] = ()
    fallback_baud: int = 1_000_000

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"Board {self.name!r} is an {self.family!r} board; the build flow supports "
                f"only {FAMILIES}"
            )

    @property
    def family(self) -> str:
        """FPGA family, one of :data:`FAMILIES` (it selects the YoWASP tools)."""
        return str(self.platform().family).lower()

    @property
    def clock_hz(self) -> int:
        """Frequency of the board's default clock (its oscillator), from the platform."""
        return int(self.platform().default_clk_frequency)

    @property
    def clock_mhz(self) -> float:
        """The board clock in MHz."""
        return self.clock_hz / 1e6

    def device_hz(self, baud: int | None = None) -> int:
        """The clock a device runs at for a link of ``baud`` (default :attr:`link_baud`).

        The slowest of the oscillator and the PLL's clocks that divides the rate exactly into
        at least :data:`GOOD_DIVISOR` cycles a bit; failing that, the slowest that gives at
        least ``hdl.link.uart.MIN_DIVISOR`` cycles within :data:`BAUD_TOLERANCE` of the rate
        (115,200 baud, which no clock here divides exactly).

        Raises
        ------
        BoardError
            No clock of the board runs the UART at ``baud``; the message says which rates do.
        """
        from hdl.link.uart import MIN_DIVISOR

        baud = self.link_baud if baud is None else baud
        if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
            raise BoardError(f"A baud rate is a positive whole number, not {baud!r}")
        clocks = sorted({self.clock_hz, *self.pll_hz})
        for clock in clocks:
            if clock % baud == 0 and clock // baud >= GOOD_DIVISOR:
                return clock
        for clock in clocks:
            divisor = round(clock / baud)
            if divisor >= MIN_DIVISOR and abs(clock / divisor - baud) <= BAUD_TOLERANCE * baud:
                return clock
        exact = sorted({c // d for c in clocks for d in (GOOD_DIVISOR, 10, 12, 16, 25)
                        if c % d == 0 and (c // d) % 100 == 0}, reverse=True)
        raise BoardError(
            f"{self.name} cannot run its UART at {baud:,} baud from its clocks "
            f"({', '.join(f'{c / 1e6:g} MHz' for c in clocks)}); rates it runs exactly include "
            f"{', '.join(f'{r:,}' for r in exact[:6])}")

    def link_for(self, fmax_hz: float) -> tuple[int, int]:
        """The link rate and device clock of a device whose slowest part reaches ``fmax_hz``:
        :attr:`link_baud` at its clock if ``fmax_hz`` meets that clock, else
        :attr:`fallback_baud` at its (slower) clock, as ``offload build`` chooses them."""
        if fmax_hz >= self.device_hz():
            return self.link_baud, self.device_hz()
        return self.fallback_baud, self.device_hz(self.fallback_baud)

    @property
    def device(self) -> str:
        """The FPGA part and package, from the platform, for reports."""
        platform = self.platform
        speed = getattr(platform, "speed", "")  # Lattice writes the ECP5 speed grade before it
        return f"{platform.device}-{speed}{platform.package}"


# Link baud rates. A rate is safe when both ends produce it exactly: the FPGA's UART divides its
# clock by a whole number of cycles per bit, and the FTDI chip's baud generator (3 MHz divided by
# n + k/8) hits it without error. Both boards' USB UARTs (the iCEBreaker's FT2232H, the ULX3S's
# FT231X) make 3 Mbaud exactly (3 MHz / 1), the FT231X's top rate. The oscillators do not divide
# it well (4 cycles a bit at 12 MHz, 8.33 at 25 MHz, where a fractional divider would jitter a
# bit by 12%), so a device runs from a PLL: 24 MHz on the iCEBreaker (8 cycles a bit) and
# 48 MHz on the ULX3S (16). 1 Mbaud (``offload build --baud 1000000``) runs from the
# oscillators, 12 and 25 cycles a bit; 115,200 is the universally supported fallback (0.2%
# error at 12 MHz, 0.01% at 25 MHz).
#
# Measurement targets: the fmax goals of the kernels each board carries (CRC-32C: 84.7 MHz at
# 1 byte a beat on the iCE40 UP5K, 170.7 MHz at 4 on the ECP5-85F), rounded up. nextpnr places
# and routes toward its constraint and reports the achieved frequency either way; beyond that
# the value matters little (ECP5: 180, 200 and 220 MHz gave identical results seed for seed;
# iCE40: 90, 100 and 120 MHz differed by less than the spread between seeds).
#: Cycles a bit a UART clock gives when the rate is chosen freely: enough to sample each bit
#: near its middle with room for a 2% mismatch between the two ends.
GOOD_DIVISOR = 8
#: How far a UART's rate may be from the one asked for when no clock divides it exactly.
BAUD_TOLERANCE = 0.01

BOARDS: dict[str, Board] = {
    board.name: board
    for board in (
        Board(
            name="icebreaker",
            platform=ICEBreakerPlatform,
            uart=("uart", 0),
            link_baud=3_000_000,
            target_mhz=90.0,
            pll_hz=(24_000_000,),
        ),
        Board(
            name="ulx3s-85f",
            platform=ULX3S_85F_Platform,
            uart=("uart", 0),
            link_baud=3_000_000,
            target_mhz=180.0,
            pll_hz=(48_000_000,),
        ),
    )
}


@dataclass(frozen=True)
class EthBoard:
    """One supported board whose host link is UDP over Gigabit Ethernet (RGMII to its PHY).

    Members
    -------
    name, platform, target_mhz
        As :class:`Board`'s.
    rgmii : tuple[str, int]
        Name and number of the platform's RGMII resource.
    core_hz : int
        The clock of the bridge and the kernels; the PLL makes it beside the RGMII's 125 MHz
        from one VCO (see ``boards.eth_top.eth_pll_settings``).
    mac, ip, udp_port : int
        The device's MAC address (48 bits), IPv4 address (32 bits) and UDP port by default;
        ``offload build --mac/--ip/--port`` choose others.
    """

    link: ClassVar[str] = "udp"

    name: str
    platform: type[Platform]
    rgmii: tuple[str, int]
    core_hz: int
    target_mhz: float
    mac: int = 0x02_00_00_00_00_50
    ip: int = int(ipaddress.IPv4Address("10.0.0.50"))
    udp_port: int = 7777

    family = Board.family
    clock_hz = Board.clock_hz
    clock_mhz = Board.clock_mhz
    device = Board.device

    def device_hz(self, baud: int | None = None) -> int:
        """The core clock (an Ethernet board has no baud rate; ``baud`` must be None)."""
        if baud is not None:
            raise BoardError(f"{self.name}'s link is UDP over Ethernet: it has no baud rate")
        return self.core_hz

    @property
    def url(self) -> str:
        """The host's URL of a device at its default address, ``udp://IP:PORT``."""
        return f"udp://{ipaddress.IPv4Address(self.ip)}:{self.udp_port}"


#: Boards on Gigabit Ethernet. The Colorlight 5A-75B (an LED-panel receiver card, an
#: LFE5U-25F with two Broadcom B50612D RGMII PHYs) is the cheapest open ECP5 board with one;
#: Lattice's Versa ECP5 (LFE5UM-45F, 100 MHz oscillator, a Marvell 88E1512 RGMII PHY) is the
#: vendor's evaluation board.
ETH_BOARDS: dict[str, EthBoard] = {
    board.name: board
    for board in (
        EthBoard(
            name="colorlight-5a75b",
            platform=Colorlight_5A75B_R70Platform,
            rgmii=("eth_rgmii", 0),
            core_hz=50_000_000,
            target_mhz=125.0,
        ),
        EthBoard(
            name="versa-ecp5",
            platform=VersaECP5Platform,
            rgmii=("eth_rgmii", 0),
            core_hz=50_000_000,
            target_mhz=125.0,
        ),
    )
}


def get_board(name: str) -> Board | EthBoard:
    """The board called ``name``: a UART board of :data:`BOARDS` or an Ethernet board of
    :data:`ETH_BOARDS`.

    Raises
    ------
    BoardError
        If offload does not support a board of that name; the message lists the ones it does.
    """
    try:
        return BOARDS[name] if name in BOARDS else ETH_BOARDS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted([*BOARDS, *ETH_BOARDS]))
        raise BoardError(f"Unknown board {name!r}; the supported boards are: {known}") from None


def link_rates() -> list[int]:
    """The rates a host tries on a serial port it is not told the rate of, in order: every
    board's link rate, then every board's fallback."""
    rates = [board.link_baud for board in BOARDS.values()]
    rates += [board.fallback_baud for board in BOARDS.values()]
    return list(dict.fromkeys(rates))
