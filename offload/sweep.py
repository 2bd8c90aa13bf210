"""``offload bench --kernel K --sweep NAME=V1,V2,...``: how a kernel's cost grows with one of its
parameters (a PIFO's capacity, a table's rows), on each board, to the first value the board
does not hold.

For every board and value: the kernel built alone (cached like every build), nextpnr's fmax
and logic cells (measured), the gateware's cycles per item in the Verilator harness
(measured), the items per second at fmax (derived), and the CPU path's reference for the same
workload (the kernel's bench hook's ``reference``, measured) beside it. A board stops at the
first value whose build fails: that is its limit, and the report says so.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .bench import DERIVED, MEASURED, BenchReport, check_output_file
from .build import progress_bar
from .errors import OffloadError
from .kernels import KernelSpec, ParamError

__all__ = ["parse_sweep", "run_sweep", "write_sweep_plot"]

#: The workload each value is measured with, in request bytes.
_SIZE = 16 << 10

_LOGIC = {"ICESTORM_LC": "LC", "TRELLIS_COMB": "LUT"}


def parse_sweep(spec: KernelSpec, text: str) -> tuple[str, list]:
    """``"capacity=8,16,32"`` to ``("capacity", [8, 16, 32])``, each value checked."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise ParamError(f"--sweep takes NAME=V1,V2,..., not {text!r}")
    if name not in spec.params:
        raise ParamError(f"{spec.name} has no parameter {name!r} (its parameters: "
                         f"{', '.join(spec.params)})")
    out = [spec.params[name].check(spec.name, name, v.strip()) for v in values.split(",")
           if v.strip()]
    if len(out) < 2:
        raise ParamError("--sweep needs two values or more to show how the cost grows")
    return name, sorted(set(out), key=out.index)


def _logic(build) -> tuple[str, int, int] | None:
    for cell, short in _LOGIC.items():
        if cell in build.resources:
            used, available = build.resources[cell]
            return short, used, available
    return None


def run_sweep(spec: KernelSpec, name: str, values: Sequence, *, boards: Sequence[str],
              console: Console | None = None, build=None, measure=None) -> BenchReport:
    """The sweep's rows (see the module doc); ``build(board, spec, params)`` and
    ``measure(spec, params) -> (cycles per item, unit, reference (name, rate) or None)`` are
    for tests to replace."""
    from boards.build import BuildError

    build = build or _build
    measure = measure or _measure
    report = BenchReport()
    with progress_bar(console) as progress:
        task = progress.add_task("sweep", total=len(values) * len(boards))
        measured: dict[tuple, tuple] = {}

        def measured_at(value, width):
            """Cycles per item at ``width`` (measured once a value and width), and the CPU's
            reference rate beside it."""
            key = (value, width)
            if key not in measured:
                progress.update(task, description=f"{spec.name} {name}={value}: Verilator "
                                f"harness at {width} B/cycle")
                params = {name: value, **spec.width_params(width)}
                per, unit, reference = measured[key] = measure(spec, params)
                report.add(spec.name, f"{name}={value}: gateware cycles per {unit[:-1]}, "
                           f"{width} B/cycle", per, "cycles", MEASURED,
                           f"Verilator harness, {_SIZE} request bytes")
                if reference is not None and not any(k[0] == value for k in measured
                                                     if k != key):
                    ref_name, rate = reference
                    report.add(spec.name, f"{name}={value}: {ref_name} {unit} per second on "
                               "this CPU", rate, f"{unit}/s", MEASURED,
                               f"the same workload, {_SIZE} request bytes")
            return measured[key]

        for board in boards:
            for k, value in enumerate(values):
                width = int(spec.resolve({name: value}, board=board).get(
                    "width", spec.default_width))
                per, unit, _ = measured_at(value, width)
                progress.update(task, description=f"{spec.name} {name}={value}: build for "
                                f"{board} (cached after the first run)")
                try:
                    result = build(board, spec, {name: value})
                except BuildError as exc:
                    first = str(exc).splitlines()[0]
                    report.skipped.append(
                        f"{spec.name} {name}={value} on {board}: the build failed ({first}); "
                        f"{board}'s limit is below it"
                        + (f", at {values[k - 1]} or above" if k else ""))
                    progress.advance(task, len(values) - k)
                    break
                progress.advance(task)
                report.add(spec.name, f"{name}={value} on {board}: fmax", result.fmax_mhz,
                           "MHz", MEASURED, f"nextpnr timing analysis, the kernel alone at "
                           f"{width} B/cycle")
                logic = _logic(result)
                if logic is not None:
                    short, used, available = logic
                    report.add(spec.name, f"{name}={value} on {board}: logic", used, short,
                               MEASURED, f"{100 * used / available:.1f}% of the {available} "
                               f"{short}s of the device")
                report.add(spec.name, f"{name}={value} on {board}: {unit} per second at fmax",
                           result.fmax_mhz * 1e6 / per, f"{unit}/s", DERIVED,
                           f"fmax {result.fmax_mhz:.1f} MHz / {per:.2f} cycles per "
                           f"{unit[:-1]} at {width} B/cycle")
    return report


def _build(board: str, spec: KernelSpec, params: dict):
    from .build import build_kernel

    return build_kernel(board, spec.name, params=params)


def _measure(spec: KernelSpec, params: dict):
    from sim.harness import StreamHarness

    from .gateware import kernel_label

    values = spec.resolve(params)
    op_name, args = spec.workload(values, _SIZE, random.Random(0))
    op = spec.operation(op_name)
    messages = op.encode(values, *args)
    extra = None
    if spec.bench is not None:
        # A hook that can (``rows=False``) gives its items alone: a scheduler's rows are a
        # bench of their own, builds included, not a figure a value of a sweep needs.
        alone = "rows" in inspect.signature(spec.bench).parameters
        extra = spec.bench(values, op_name, args, **({"rows": False} if alone else {}))
    items, unit = (extra["items"], extra["unit"]) if extra else \
        (sum(len(m) for m in messages), "bytes")
    harness = StreamHarness.for_component(lambda: spec.component(**params),
                                          kernel_label(spec, values), int(values.get("width", 1)))
    result = harness.run(messages)
    return result.active_cycles / max(items, 1), unit, (extra or {}).get("reference")


def _boards_in(report: BenchReport) -> set[str]:
    return {row.what.split(" on ", 1)[1].split(":", 1)[0] for row in report.rows
            if " on " in row.what.split(":", 1)[0]}


def write_sweep_plot(report: BenchReport, name: str, path: Path) -> None:
    """fmax and logic against the swept parameter, a line per board, and the items per second
    at fmax beside the CPU's reference."""
    from .bench import _pyplot

    path = check_output_file(path, "the plot file")
    plt = _pyplot()
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in report.rows:
        head, _, what = row.what.partition(": ")
        value_text, _, board = head.partition(" on ")
        value = float(value_text.split("=", 1)[1])
        key = ("fmax" if what == "fmax" else "logic" if what == "logic" else
               "rate" if "per second" in what else None, board or what)
        if key[0] is not None:
            series.setdefault(key, []).append((value, row.value))
    if not series:
        raise OffloadError("nothing to plot: the sweep built nothing")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    titles = {"fmax": "fmax (MHz)", "logic": "logic used (iCE40 LCs, ECP5 LUTs)",
              "rate": "items per second"}
    labels = sorted({label for _, label in series})
    colour = {label: f"C{k}" for k, label in enumerate(labels)}  # a board's colour everywhere
    boards = _boards_in(report)
    for ax, kind in zip(axes, ("fmax", "logic", "rate"), strict=True):
        for (k, label), points in sorted(series.items()):
            if k == kind:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=label, color=colour[label],
                        linestyle="--" if label not in boards else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(name)
        ax.set_title(titles[kind])
        if kind == "rate":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"offload bench --sweep {name}: measured (fmax, logic, CPU) and derived "
                 "(rate at fmax)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
