"""``offload build``: a kernel's bitstream for a board, with its timing and resource report."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import kernels as registry
from .errors import OffloadError
from .gateware import board_width, device_design, kernel_label

__all__ = ["build_kernel", "build_device", "check_build_dir", "module_rows", "print_modules",
           "print_report", "progress_bar"]


def check_build_dir(build_dir: Path | None, what: str = "the build folder") -> Path:
    """Make sure a build can write its files: ``build_dir``, or the cache when it is ``None``.

    Cheap, so that it runs before a build of minutes rather than failing in its middle. Makes
    the folder if it is missing. ``what`` names it in the message (``--build-dir``).

    Raises
    ------
    OffloadError
        If the folder is a file, cannot be made, or is not writable; the message says which.
    """
    if build_dir is None:
        from sim.toolchain import cache_dir

        return cache_dir()  # raises ToolchainError, an OffloadError, saying what is wrong
    path = Path(build_dir)
    if path.exists() and not path.is_dir():
        raise OffloadError(f"{what} {str(path)!r} is a file, not a folder: choose another")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OffloadError(f"cannot make {what} {str(path)!r}: {exc.strerror or exc}; "
                           "choose a folder you can write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OffloadError(f"{what} {str(path)!r} is not writable: choose a folder you can "
                           "write to")
    return path


def build_kernel(board: str, kernel: str, *, width: int | None = None,
                 params: dict | None = None, build_dir: Path | None = None,
                 progress: Progress | None = None):
    """Build ``kernel`` alone between ``board``'s pins, for its fmax and resources.

    Returns a ``boards.build.BuildReport``; ``progress`` shows the steps if given.
    """
    from boards.build import build
    from boards.top import KernelPinTop

    check_build_dir(build_dir)
    spec = registry.get(kernel)
    params = dict(params or {})
    if width is not None:  # board_width: an error for a width the kernel cannot have
        params = {**spec.width_params(board_width(board, spec, width)), **params}
    params = spec.resolve(params, board=board)
    name = kernel_label(spec, params)
    return build(board, lambda: KernelPinTop(spec.component(**params)), name=name,
                 build_dir=build_dir, progress=_steps(progress, f"{board}: {name}"))


def build_device(board: str, kernel_names, *, width: int | None = None,
                 params: dict | None = None, build_dir: Path | None = None,
                 progress: Progress | None = None, baud: int | None = None,
                 address: tuple[int, int, int] | None = None):
    """Build the device for ``board``: UART (at ``baud``, default the board's rate), or on an
    Ethernet board UDP (at ``address``, MAC, IPv4 and port, default the board's), link bridge
    and kernels. A BuildReport."""
    from boards import get_board
    from boards.build import build

    check_build_dir(build_dir)
    design = device_design(board, kernel_names, width, params=params, baud=baud,
                           address=address)
    # Placed and routed for the clock the device runs at: the oscillator's, or the PLL's (which
    # constrains its own output; the oscillator's pin keeps its true frequency).
    oscillator = get_board(board).clock_mhz
    return build(board, lambda: design.top("board"), name=design.name, build_dir=build_dir,
                 progress=_steps(progress, f"{board}: {design.name}"),
                 target_mhz=oscillator, clock_mhz=design.clock_hz / 1e6)


def progress_bar(console: Console | None) -> Progress:
    """The progress display of long steps (builds, simulations)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _steps(progress: Progress | None, label: str):
    if progress is None:
        return None
    task = progress.add_task(label, total=4)

    def step(what: str, index: int, total: int) -> None:
        progress.update(task, completed=index, total=total, description=f"{label}: {what}")

    return step


def print_kernels(device, alone, console: Console, fits=()) -> None:
    """Each kernel of ``device`` built alone between the pins (``(name, report)`` pairs): its
    own fmax and resources, and the room the device leaves; for each of ``fits`` (``(name,
    unit, amount, ((report, amount), (report, amount)))``), how much more of ``unit`` the room
    holds (see ``KernelSpec.fit``)."""
    table = Table(title="each kernel alone (between the pins, without the link)",
                  title_justify="left")
    for column in ("kernel", "fmax MHz", "its resources alone (used / on the chip)"):
        table.add_column(column, justify="right" if column == "fmax MHz" else "left")
    for name, report in alone:
        cells = ", ".join(f"{cell} {used}/{available}"
                          for cell, (used, available) in sorted(report.resources.items())
                          if used and cell in device.resources and cell not in _PADS)
        table.add_row(name, f"{report.fmax_mhz:.1f}", cells)
    console.print(table)
    free = ", ".join(f"{cell} {available - used}"
                     for cell, (used, available) in sorted(device.resources.items())
                     if used and cell not in _PADS)
    console.print(f"  room left in the device: {free}")
    for name, unit, amount, measured in fits:
        line = fit_line(device, name, unit, amount, measured)
        if line:
            console.print(f"  {line}")


#: The cells a kernel's logic is counted in, per architecture.
_LOGIC = ("ICESTORM_LC", "TRELLIS_COMB")


def fit_line(device, name: str, unit: str, amount: int, measured) -> str | None:
    """How many more of ``unit`` the device's room holds (it has ``amount``), at the cost of
    one measured between two builds of the kernel alone (``measured``: ``(report, amount)``
    pairs, fewer first): a derived figure."""
    cell = next((c for c in _LOGIC if c in device.resources), None)
    (small, fewer), (large, more_) = measured
    if cell is None or more_ <= fewer:
        return None
    used, available = device.resources[cell]
    cost = (large.resources[cell][0] - small.resources[cell][0]) / (more_ - fewer)
    if cost <= 0:
        return None
    room = available - used
    return (f"{name}: a {unit[:-1]} costs about {cost:.0f} {cell} ({more_} {unit} against "
            f"{fewer}, each kernel built alone); the room left ({room}) holds about "
            f"{int(room / cost)} more {unit} beside this build's {amount} (derived)")


# I/O cells and global resources a kernel alone uses for its pins, not for its logic.
_PADS = {"SB_IO", "TRELLIS_IO", "SB_GB", "DCCA", "GSR"}


#: The columns of the modules table, in order; a column no module uses is left out.
_MODULE_COLUMNS = ("LUT4", "carry", "flip-flops", "block RAM", "LUT RAM", "SPRAM", "DSP")


def module_rows(modules: dict[str, dict[str, int]], kernel_ids: dict[int, str]
                ) -> list[tuple[str, dict[str, int]]]:
    """The rows of the modules table, ``(label, cells)``, from
    :func:`boards.build.module_resources` of a device: the whole device; the link (everything
    but the kernels) and its parts (the top's modules, and the bridge's own ones); then each
    kernel, named from ``kernel_ids`` (id to name)."""
    def minus(a: dict[str, int], *others: dict[str, int]) -> dict[str, int]:
        return {k: v - sum(o.get(k, 0) for o in others) for k, v in a.items()}

    kernels = {path: cells for path, cells in modules.items()
               if path.startswith("bridge.kernel_") and path.count(".") == 1}
    parts = sorted(path for path, cells in modules.items()
                   if path and path.count(".") == 0 and path != "bridge" and any(cells.values()))
    bridge_parts = sorted(path for path, cells in modules.items()
                          if path.startswith("bridge.") and path.count(".") == 1
                          and path not in kernels and any(cells.values()))
    rows = [("whole device", modules.get("", {})),
            ("link (all but the kernels)", minus(modules.get("", {}), *kernels.values()))]
    rows += [(f"  {path}", modules[path]) for path in parts]
    if "bridge" in modules:
        rows.append(("  bridge, its own logic", minus(modules["bridge"], *(
            modules[path] for path in bridge_parts), *kernels.values())))
        rows += [(f"    {path}", modules[path]) for path in bridge_parts]
    for path in sorted(kernels, key=lambda path: int(path.rsplit("_", 1)[1])):
        kernel_id = int(path.rsplit("_", 1)[1])
        rows.append((f"kernel {kernel_ids.get(kernel_id, kernel_id)} ({path})", kernels[path]))
    return rows


def print_modules(report, kernel_ids: dict[int, str], console: Console) -> None:
    """Where a device's logic is: Yosys's cells for the link, its parts and each kernel."""
    from boards.build import module_resources

    rows = module_rows(module_resources(report), kernel_ids)
    columns = [c for c in _MODULE_COLUMNS if any(cells.get(c) for _, cells in rows)]
    table = Table(title="cells by module (Yosys with the hierarchy kept, before place and "
                        "route: a logic cell holds a LUT4, a carry and a flip-flop)",
                  title_justify="left")
    table.add_column("module")
    for column in columns:
        table.add_column(column, justify="right")
    for label, cells in rows:
        table.add_row(label, *(f"{cells.get(c, 0):,}" for c in columns))
    console.print(table)


def print_report(report, console: Console) -> None:
    """The build report as a person reads it: fmax against the clocks, resources, files."""
    verdict = "[green]meets[/]" if report.meets_board_clock else "[red]misses[/]"
    cached = " (cached build)" if report.cached else ""
    console.print(f"[bold]{report.design}[/] on [bold]{report.board}[/]{cached}")
    from boards import get_board

    clock = ("the board clock" if report.board_clock_mhz == get_board(report.board).clock_mhz
             else "the device clock (from the PLL)")
    if len(report.clock_goals) > 1:  # a device with clocks of its own: each against its goal
        verdict = "[green]meets[/]" if report.meets_every_clock else "[red]misses[/]"
        console.print(f"  {verdict} every clock's constraint:")
        for net, goal in sorted(report.clock_goals.items()):
            fmax = report.clocks.get(net, 0.0)
            console.print(f"    {net}: fmax {fmax:.1f} MHz, "
                          f"{'[green]meets[/]' if fmax >= goal else '[red]misses[/]'} {goal:g} MHz")
    else:
        console.print(
            f"  fmax {report.fmax_mhz:.1f} MHz: {verdict} {clock} of "
            f"{report.board_clock_mhz:g} MHz; placed and routed for {report.target_mhz:g} MHz "
            f"({'reached' if report.meets_target else 'not reached'})"
        )
    table = Table(title="resources", title_justify="left")
    for column in ("cell", "used", "available", "%"):
        table.add_column(column, justify="right" if column != "cell" else "left")
    for cell, (used, available) in sorted(report.resources.items()):
        if used:
            table.add_row(cell, str(used), str(available), f"{100 * used / available:.1f}")
    console.print(table)
    console.print(f"  bitstream: {report.bitstream}")
    for what, path in report.logs.items():
        console.print(f"  {what} log: {path}")
