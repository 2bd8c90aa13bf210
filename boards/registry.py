"""The open boards offload builds bitstreams for.

Each board is one :class:`Board` record on top of its ``amaranth-boards`` platform: the FPGA
family (which selects the YoWASP tools), the board's oscillator, the pins wired to the board's
USB-UART (the link to the host) and the baud rate the link runs at, and the clock frequency a
measurement build is constrained to so that nextpnr optimises for speed rather than for the slow
board oscillator.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.build import Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from hdl.errors import OffloadError

__all__ = ["BOARDS", "Board", "BoardError", "FAMILIES", "get_board"]

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
    """

    name: str
    platform: type[Platform]
    uart: tuple[str, int]
    link_baud: int
    target_mhz: float

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

    @property
    def device(self) -> str:
        """The FPGA part and package, from the platform, for reports."""
        platform = self.platform
        speed = getattr(platform, "speed", "")  # Lattice writes the ECP5 speed grade before it
        return f"{platform.device}-{speed}{platform.package}"


# Link baud rates. A rate is safe when both ends produce it exactly: the FPGA's UART divides its
# clock by a whole number of cycles per bit, and the FTDI chip's baud generator (3 MHz divided by
# n + k/8) hits it without error. 1 Mbaud is 12 cycles per bit at 12 MHz and 25 at 25 MHz, and
# 3 MHz / 3 on both FTDI parts, so it is exact everywhere, with enough cycles per bit to sample
# each bit near its middle. Faster rates are not: the FT231X on the ULX3S tops out at 3 Mbaud,
# which is 8.33 cycles per bit at 25 MHz (a fractional divider would jitter a bit by 12 %), and
# the iCEBreaker's FT2232H could go to 12 Mbaud but its FPGA clock cannot sample that. If a host
# adapter misbehaves at 1 Mbaud, 115200 is the universally supported fallback (0.2 % error at
# 12 MHz, 0.01 % at 25 MHz).
#
# Measurement targets: the fmax goals of the kernels each board carries (CRC-32C: 84.7 MHz at
# 1 byte a beat on the iCE40 UP5K, 170.7 MHz at 4 on the ECP5-85F), rounded up. nextpnr places
# and routes toward its constraint and reports the achieved frequency either way; beyond that
# the value matters little (ECP5: 180, 200 and 220 MHz gave identical results seed for seed;
# iCE40: 90, 100 and 120 MHz differed by less than the spread between seeds).
BOARDS: dict[str, Board] = {
    board.name: board
    for board in (
        Board(
            name="icebreaker",
            platform=ICEBreakerPlatform,
            uart=("uart", 0),
            link_baud=1_000_000,
            target_mhz=90.0,
        ),
        Board(
            name="ulx3s-85f",
            platform=ULX3S_85F_Platform,
            uart=("uart", 0),
            link_baud=1_000_000,
            target_mhz=180.0,
        ),
    )
}


def get_board(name: str) -> Board:
    """The board called ``name``.

    Raises
    ------
    BoardError
        If offload does not support a board of that name; the message lists the ones it does.
    """
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(BOARDS))
        raise BoardError(f"Unknown board {name!r}; the supported boards are: {known}") from None
