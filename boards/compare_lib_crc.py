"""The CRC-32C kernel against Amaranth's own CRC processor, on the same boards and the same flow.

``amaranth.lib.crc`` has a CRC-32C (``CRC32_ISCSI``) processor that takes one data word per
cycle: a single register updated through one XOR tree from the register and the word. It has no
stream interface, no message framing and no response queue, so it is the fastest plain
CRC-32C a naive design gets, and the kernel's fmax is judged against it. Both are built here in
the same :class:`boards.top.PinTop` harness, in one run, so that the comparison does not depend
on tool versions or seeds that differ between runs.

Run ``python -m boards.compare_lib_crc --seeds 8`` for the table (each design placed and routed
with nextpnr seeds 1 to 8); ``--nextpnr-opt`` and ``--synth-opt`` pass options to every build.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from amaranth.lib.crc import Processor
from amaranth.lib.crc.catalog import CRC32_ISCSI

from hdl.kernels.crc32c import Crc32cKernel

from .build import BuildReport, build
from .top import KernelPinTop, PinTop

__all__ = ["CASES", "Comparison", "LibCrcPinTop", "compare", "main"]

#: (board, kernel width in bytes) pairs measured by default: the kernel width each board's
#: bitstream is meant to carry.
CASES: tuple[tuple[str, int], ...] = (("icebreaker", 1), ("ulx3s-85f", 4))


class LibCrcPinTop(PinTop):
    """``amaranth.lib.crc``'s CRC-32C processor for ``width``-byte words, between the pins.

    Parameters
    ----------
    width : int
        Bytes per data word.
    """

    def __init__(self, width: int):
        processor = CRC32_ISCSI(data_width=8 * width).create()
        assert isinstance(processor, Processor)
        super().__init__(
            processor,
            inputs=[processor.data, processor.valid, processor.start],
            outputs=[processor.crc, processor.match_detected],
        )


@dataclass
class Comparison:
    """The kernel and the library processor built for one board and width, over seeds.

    Members
    -------
    board : str
    width : int
        Bytes per beat (per word for the library processor).
    kernel : list[BuildReport]
        ``Crc32cKernel(width)`` in :class:`KernelPinTop`, one report per seed.
    library : list[BuildReport]
        ``amaranth.lib.crc`` CRC-32C in :class:`LibCrcPinTop`, one report per seed.
    """

    board: str
    width: int
    kernel: list[BuildReport]
    library: list[BuildReport]

    @staticmethod
    def fmax(reports: Sequence[BuildReport]) -> tuple[float, float, float]:
        """Lowest, median and highest fmax of ``reports``, in MHz."""
        values = [report.fmax_mhz for report in reports]
        return min(values), statistics.median(values), max(values)

    @property
    def ratio(self) -> float:
        """Median kernel fmax over median library fmax."""
        return self.fmax(self.kernel)[1] / self.fmax(self.library)[1]


def compare(
    cases: Sequence[tuple[str, int]] = CASES,
    *,
    seeds: Sequence[int] = (1,),
    nextpnr_opts: Sequence[str] = (),
    synth_opts: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> list[Comparison]:
    """Build the kernel and the library processor for each (board, width) in ``cases``.

    Each design is placed and routed once per nextpnr seed in ``seeds``: fmax varies by several
    percent from seed to seed, more than the difference a single build would be read as.
    ``progress``, when given, is called with a line saying which build starts.
    """
    results = []
    for board, width in cases:
        reports: dict[str, list[BuildReport]] = {"kernel": [], "library": []}
        for role, name, factory in (
            ("kernel", f"crc32c_w{width}", lambda w=width: KernelPinTop(Crc32cKernel(w))),
            ("library", f"libcrc_w{width}", lambda w=width: LibCrcPinTop(w)),
        ):
            for seed in seeds:
                if progress is not None:
                    progress(f"{board}: {name}, seed {seed}")
                reports[role].append(
                    build(
                        board,
                        factory,
                        name=name,
                        nextpnr_opts=["--seed", str(seed), *nextpnr_opts],
                        synth_opts=synth_opts,
                    )
                )
        results.append(Comparison(board, width, reports["kernel"], reports["library"]))
    return results


def _resources(report: BuildReport) -> str:
    shown = {
        "ICESTORM_LC": "LC",
        "ICESTORM_RAM": "BRAM",
        "TRELLIS_COMB": "LUT",
        "TRELLIS_RAMW": "LUTRAM",
        "DP16KD": "BRAM",
    }
    used = [
        f"{report.resources[cell][0]} {label}"
        for cell, label in shown.items()
        if report.resources.get(cell, (0, 0))[0]
    ]
    return ", ".join([*used, f"{report.flip_flops} FF"])


def main(argv: Sequence[str] | None = None) -> None:
    """Print the comparison as a table."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m boards.compare_lib_crc", description=__doc__)
    parser.add_argument(
        "--seeds", type=int, default=1, metavar="N", help="place and route with seeds 1 to N"
    )
    parser.add_argument("--nextpnr-opt", action="append", default=[], metavar="OPT")
    parser.add_argument("--synth-opt", action="append", default=[], metavar="OPT")
    args = parser.parse_args(argv)

    # Rich assumes 80 columns when the output is not a terminal; the table needs more.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    with console.status("building") as status:
        results = compare(
            seeds=range(1, args.seeds + 1),
            nextpnr_opts=args.nextpnr_opt,
            synth_opts=args.synth_opt,
            progress=lambda line: status.update(f"building {line}"),
        )

    table = Table(title="CRC-32C fmax in MHz: offload kernel vs amaranth.lib.crc, same flow")
    for column in ("board", "W", "design", "min", "median", "max", "target", "resources"):
        table.add_column(column, no_wrap=True)
    table.add_column("tools s", no_wrap=True)
    for result in results:
        for label, reports in (("kernel", result.kernel), ("lib.crc", result.library)):
            low, mid, high = result.fmax(reports)
            seconds = statistics.median(report.seconds for report in reports)
            cached = all(report.cached for report in reports)
            table.add_row(
                result.board,
                str(result.width),
                label,
                f"{low:.1f}",
                f"{mid:.1f}",
                f"{high:.1f}",
                f"{reports[0].target_mhz:.0f}",
                _resources(reports[0]),
                f"{seconds:.0f}" + (" (cached)" if cached else ""),
            )
    console.print(table)
    for result in results:
        console.print(
            f"{result.board} W={result.width}: kernel / lib.crc median fmax = {result.ratio:.2f}"
        )


if __name__ == "__main__":
    main()
