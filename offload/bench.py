"""``offload bench``: the CPU path against the gateware, measured and derived, in one run.

Every figure is a :class:`Row` whose ``source`` says how it was obtained:

* ``measured``: timed or counted in this run (a wall clock, a simulator's cycle count, or
  nextpnr's static timing analysis of a bitstream built by this run or taken from its cache);
* ``derived``: computed from measured figures and stated parameters (a board's clock, its UART
  rate), with the formula in ``note``.

Nothing is invented: a figure that cannot be obtained here (a tool missing, a build failing) is
left out with a line saying why, never filled in.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import OffloadError
from .kernels import KernelSpec

__all__ = ["Row", "BenchReport", "measure_amaranth_sim", "check_output_file",
           "check_plot_support", "write_json", "write_plot"]

MEASURED = "measured"
DERIVED = "derived"
#: A published figure, quoted as an anchor beside this run's own (the note names the source).
CITED = "cited"
SOURCES = (MEASURED, DERIVED, CITED)


@dataclass
class Row:
    kernel: str
    what: str
    value: float
    unit: str
    source: str
    note: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, not "
                             f"{self.source!r}")


@dataclass
class BenchReport:
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [asdict(row) for row in self.rows],
            "skipped": self.skipped,
        }


def bench_data(size: int, seed: int = 0) -> bytes:
    """The bench's input: ``size`` pseudo-random bytes, the same in every run."""
    if size < 0:
        raise ValueError(f"size must be at least 0 bytes, not {size}")
    return random.Random(seed).randbytes(size)


def time_call(fn: Callable[[], Any], *, min_seconds: float = 0.3, repeats: int = 5) -> float:
    """Best seconds per call of ``fn`` over ``repeats`` batches of at least ``min_seconds``.

    The best batch, not the mean: other work on the machine only ever slows a batch down.
    """
    fn()  # warm up caches and lazy imports
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds / repeats or calls > 1 << 20:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def measure_amaranth_sim(spec: KernelSpec, width: int, cycles: int = 4000) -> tuple[int, float]:
    """Amaranth's own simulator streaming beats through the kernel: (cycles, seconds)."""
    from amaranth.sim import Simulator

    dut = spec.component(**spec.width_params(width))
    payload = random.Random(1).randbytes(width)
    elapsed = 0.0

    async def testbench(ctx):
        nonlocal elapsed
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_stream.valid, 1)
        fields = {"data": int.from_bytes(payload, "little"), "nbytes": width, "last": 0,
                  "error": 0, "op": 0}
        layout = dut.i_stream.payload.shape()
        ctx.set(dut.i_stream.payload, {k: v for k, v in fields.items() if k in layout.members})
        start = time.perf_counter()
        for i in range(cycles):
            # A message ends every 64 beats so the finishing stages and the queue work too.
            ctx.set(dut.i_stream.payload.last, i % 64 == 63)
            await ctx.tick()
        elapsed = time.perf_counter() - start

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return cycles, elapsed


def check_output_file(path: Path, what: str = "the output file") -> Path:
    """Raise :class:`OffloadError` unless a file can be written at ``path``.

    Cheap, so that a command checks where its results go before a bench of minutes starts,
    rather than failing at the end. ``what`` names the path in the message (``--json``).
    """
    path = Path(path)
    if path.is_dir():
        raise OffloadError(f"{what} {str(path)!r} is a folder: give a file name in it")
    parent = path.parent
    if not parent.is_dir():
        kind = "is not a folder" if parent.exists() else "does not exist"
        raise OffloadError(f"{what} {str(path)!r} cannot be written: {str(parent)!r} {kind}; "
                           "give a path in an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OffloadError(f"{what} {str(path)!r} cannot be written: the folder {str(parent)!r} "
                           "is not writable; give a path in a folder you can write to")
    return path


def check_plot_support() -> None:
    """Raise :class:`OffloadError` (saying what to install) unless matplotlib imports."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise OffloadError(
            "--plot needs matplotlib: pip install 'offload[plot]' (or pip install matplotlib)"
        ) from exc
    return plt


def write_json(report: BenchReport, path: Path) -> None:
    path = check_output_file(path, "the JSON file")
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def write_plot(report: BenchReport, path: Path) -> None:
    """Throughput of each place a kernel can run, on one log axis, measured and derived apart."""
    path = check_output_file(path, "the plot file")
    plt = _pyplot()
    rows = [row for row in report.rows if row.unit == "MB/s"]
    if not rows:
        raise OffloadError("nothing to plot: the bench produced no MB/s figures")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    labels = [f"{row.kernel}: {row.what}" for row in rows]
    palette = {MEASURED: "tab:blue", DERIVED: "tab:orange", CITED: "tab:gray"}
    colours = [palette[row.source] for row in rows]
    ax.barh(labels, [row.value for row in rows], color=colours)
    ax.set_xscale("log")
    ax.set_xlabel("MB/s (log scale)")
    ax.invert_yaxis()
    for y, row in enumerate(rows):
        ax.text(row.value, y, f" {row.value:,.3g}", va="center", fontsize=8)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="tab:blue", label=MEASURED),
                       Patch(color="tab:orange", label=DERIVED),
                       Patch(color="tab:gray", label=CITED)], loc="lower right")
    ax.set_title("offload bench: throughput by where the kernel runs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

