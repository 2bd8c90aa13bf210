"""A board's device clock from its oscillator through the FPGA's PLL.

The link's UART divides its clock by a whole number of cycles per bit, so a fast link rate
needs a clock that is a multiple of it: 3 Mbaud is 8 cycles a bit at 24 MHz (the iCEBreaker's
12 MHz oscillator doubled) and 16 at 48 MHz (from the ULX3S's 25 MHz). :class:`PllClock` makes
the ``sync`` domain at such a frequency, held in reset until the PLL has locked and then for
:data:`POR_SECONDS` (iCE40 block RAMs read as zero for a few microseconds after configuration;
Amaranth's own default domain waits for the same reason).

The settings are searched for, not tabled, and only exact ones are taken: the frequency a PLL
makes is the one asked for, or :func:`pll_settings` says it cannot be made. The search keeps to
each family's documented ranges (Lattice TN1251 for the iCE40 sysCLOCK PLL, TN1263 for the
ECP5's EHXPLLL), the same ranges ``icepll`` and ``ecppll`` use.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import ClockSignal, Const, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

__all__ = ["POR_SECONDS", "PllClock", "PllError", "PllSettings", "ehxplll", "pll_settings"]

#: Time the device is held in reset after the PLL locks: 5x the ~3 us an iCE40's block RAMs
#: read as zero after configuration.
POR_SECONDS = 15e-6


class PllError(ValueError):
    """A PLL cannot make the frequency asked for from the board's oscillator."""


@dataclass(frozen=True)
class PllSettings:
    """One PLL configuration: the primitive's parameters and the frequencies they give."""

    family: str
    params: tuple[tuple[str, int], ...]
    vco_hz: Fraction
    out_hz: Fraction

    def param(self, name: str) -> int:
        return dict(self.params)[name]


def _ice40(fin: int, fout: int) -> PllSettings | None:
    # SB_PLL40 in SIMPLE feedback: fout = fin * (DIVF + 1) / ((DIVR + 1) * 2 ** DIVQ), with the
    # phase detector at 10 to 133 MHz, the VCO at 533 to 1066 MHz and the output 16 to 275 MHz.
    if not 16e6 <= fout <= 275e6:
        return None
    for divr in range(16):
        pfd = Fraction(fin, divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divq in range(1, 7):
            vco = Fraction(fout) * 2 ** divq
            divf = vco / pfd - 1
            if divf.denominator == 1 and 0 <= divf <= 127 and 533e6 <= vco <= 1066e6:
                # The loop filter's range follows the phase detector's frequency (icepll).
                filter_range = next(i for i, top in enumerate(
                    (17e6, 26e6, 44e6, 66e6, 101e6, float("inf")), start=1) if pfd < top)
                return PllSettings("ice40", (("DIVR", divr), ("DIVF", int(divf)),
                                             ("DIVQ", divq), ("FILTER_RANGE", filter_range)),
                                   vco, Fraction(fout))
    return None


def _ecp5(fin: int, fout: int) -> PllSettings | None:
    # EHXPLLL with CLKOP fed back: CLKOP = fin / CLKI_DIV * CLKFB_DIV, VCO = CLKOP * CLKOP_DIV
    # (400 to 800 MHz), phase detector and outputs 3.125 to 400 MHz; the output is
    # CLKOS = VCO / CLKOS_DIV.
    for clki_div in range(1, 129):
        pfd = Fraction(fin, clki_div)
        if pfd < 3.125e6:
            break
        if pfd > 400e6:
            continue
        # The fewest output dividers first: the fed-back CLKOP as fast as it can be.
        for clkop_div in range(1, 129):
            for clkfb_div in range(1, 129):
                vco = pfd * clkfb_div * clkop_div
                if vco > 800e6:
                    break
                if vco < 400e6 or pfd * clkfb_div > 400e6:  # CLKOP is an output too
                    continue
                clkos_div = vco / fout
                if clkos_div.denominator == 1 and 1 <= clkos_div <= 128:
                    return PllSettings("ecp5", (("CLKI_DIV", clki_div), ("CLKFB_DIV", clkfb_div),
                                                ("CLKOP_DIV", clkop_div),
                                                ("CLKOS_DIV", int(clkos_div))),
                                       vco, Fraction(fout))
    return None


def pll_settings(family: str, fin: int, fout: int) -> PllSettings:
    """The settings of ``family``'s PLL that make exactly ``fout`` Hz from ``fin`` Hz.

    Raises
    ------
    PllError
        No setting makes ``fout`` exactly, or ``family`` has no PLL offload drives.
    """
    search = {"ice40": _ice40, "ecp5": _ecp5}.get(family)
    if search is None:
        raise PllError(f"offload drives the PLLs of {sorted(('ice40', 'ecp5'))}, not {family!r}")
    found = search(int(fin), int(fout))
    if found is None:
        raise PllError(f"the {family} PLL cannot make exactly {fout / 1e6:g} MHz from "
                       f"{fin / 1e6:g} MHz")
    return found


def ehxplll(settings: PllSettings, fin: int, clki, locked, clkos: tuple,
            clkos2: tuple | None = None) -> Instance:
    """The ECP5's EHXPLLL with ``settings`` (from :func:`pll_settings`): ``clki`` at ``fin``
    Hz in, its lock on ``locked``, ``settings.out_hz`` on CLKOS and optionally a second clock
    of the same VCO on CLKOS2. ``clkos`` is ``(signal, hz)``; ``clkos2`` is ``(signal, hz,
    divider)``. CLKOP is the feedback."""
    p = dict(settings.params)
    feedback = Signal()
    extra = {}
    if clkos2 is not None:
        clk2, hz2, div2 = clkos2
        extra = dict(a_FREQUENCY_PIN_CLKOS2=f"{hz2 / 1e6:g}", p_CLKOS2_ENABLE="ENABLED",
                     p_CLKOS2_DIV=div2, p_CLKOS2_CPHASE=div2 - 1, p_CLKOS2_FPHASE=0,
                     o_CLKOS2=clk2)
    return Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{fin / 1e6:g}",
        a_FREQUENCY_PIN_CLKOS=f"{clkos[1] / 1e6:g}",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
        p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_FEEDBK_PATH="CLKOP",
        p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"],
        p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
        p_CLKOP_CPHASE=p["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0,
        p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=p["CLKOS_DIV"],
        p_CLKOS_CPHASE=p["CLKOS_DIV"] - 1, p_CLKOS_FPHASE=0,
        **extra,
        i_CLKI=clki, i_CLKFB=feedback, o_CLKOP=feedback, o_CLKOS=clkos[0],
        i_RST=Const(0), i_STDBY=Const(0), i_PHASESEL0=Const(0), i_PHASESEL1=Const(0),
        i_PHASEDIR=Const(1), i_PHASESTEP=Const(1), i_PHASELOADREG=Const(1),
        i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0), o_LOCK=locked,
    )


class PllClock(Elaboratable):
    """Drives the ``sync`` domain at ``hz``, from the platform's default clock through its PLL.

    The parent defines the ``sync`` and ``por`` domains (``por`` is the PLL's clock without
    the reset, for the reset's own counter); this drives their clocks and ``sync``'s reset.

    Parameters
    ----------
    hz : int
        The frequency to make (exactly: see :func:`pll_settings`).
    """

    DOMAINS = ("sync", "por")

    def __init__(self, hz: int):
        self.hz = int(hz)

    def elaborate(self, platform):
        m = Module()
        family = str(platform.family).lower()
        fin = int(platform.default_clk_frequency)
        settings = pll_settings(family, fin, self.hz)
        locked = Signal()
        pll_clk = Signal()
        pin = platform.request(platform.default_clk, dir="-")
        p = dict(settings.params)
        if family == "ice40":
            # The iCEBreaker's oscillator is on a PLL pad: SB_PLL40_PAD takes the pin itself.
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=Const(p["DIVR"], 4), p_DIVF=Const(p["DIVF"], 7),
                p_DIVQ=Const(p["DIVQ"], 3), p_FILTER_RANGE=Const(p["FILTER_RANGE"], 3),
                i_PACKAGEPIN=pin.io if hasattr(pin, "io") else pin,
                i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=pll_clk, o_LOCK=locked,
            )
        else:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", pin)
            m.submodules.pll = ehxplll(settings, fin, clk_buf.i, locked, (pll_clk, self.hz))
        m.d.comb += [ClockSignal("sync").eq(pll_clk), ClockSignal("por").eq(pll_clk)]
        platform.add_clock_constraint(pll_clk, self.hz)
        # Reset: from the PLL's lock (synchronised), then POR_SECONDS of counting.
        m.submodules.lock_sync = ResetSynchronizer(~locked, domain="por")
        delay = max(1, int(POR_SECONDS * self.hz))
        count = Signal(range(delay + 1))
        with m.If(count != delay):
            m.d.por += count.eq(count + 1)
        m.d.comb += ResetSignal("sync").eq(count != delay)
        return m
