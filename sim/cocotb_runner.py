"""Running a cocotb testbench against an Amaranth component under Verilator.

This wraps ``cocotb_tools.runner`` (cocotb 2.x) so that a pytest test is one call:

- the component's Verilog is built once per design into the build cache (a folder keyed by a
  hash of the Verilog, the build options, the cocotb and Verilator versions and where cocotb's
  libraries are), so each width of a kernel has its own model and a second run starts the
  simulation at once;
- the testbench gets its parameters as ``OFFLOAD_<NAME>`` environment variables;
- a failing testbench raises :class:`~sim.build.SimulationError` naming the failed cocotb tests
  and their messages, instead of the ``SystemExit`` that cocotb's runner raises.

cocotb itself is imported only by the testbench, inside the simulator process; this module
imports ``cocotb_tools`` (the runner) only when called.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from amaranth.lib import wiring

from . import toolchain
from .build import SimulationError, build_failed, build_once, log_tail, verilator_version
from .verilog import to_verilog

__all__ = ["COCOTB_BUILD_ARGS", "CocotbResult", "run_cocotb"]

#: Verilator options of cocotb builds. The model runs at the speed of the Python testbench, so
#: it is compiled at Verilator's default optimisation, which builds fastest.
COCOTB_BUILD_ARGS: tuple[str, ...] = ("-Wno-fatal", "-Wno-lint", "-Wno-style")

# Amaranth's Verilog has no `timescale; cocotb's Clock needs a precision finer than its period.
_TIMESCALE = ("1ns", "1ps")

# Lines of a log quoted in an error.
_LOG_TAIL_LINES = 30

# A failure message of one cocotb test is cut to this many characters in the error.
_REASON_CHARS = 400


@dataclass(frozen=True)
class CocotbResult:
    """The outcome of a passing :func:`run_cocotb`.

    Members
    -------
    results_xml : Path
        cocotb's xUnit results file.
    log : Path
        The simulator's output.
    build_dir : Path
        The cached model's folder.
    tests : int
        cocotb tests run (skipped ones included).
    skipped : int
        Of those, how many were skipped.
    sim_time_ns : float
        Simulated time of all tests together.
    wall_seconds : float
        Wall time of all tests together, as cocotb measured it.
    """

    results_xml: Path
    log: Path
    build_dir: Path
    tests: int
    skipped: int = 0
    sim_time_ns: float = 0.0
    wall_seconds: float = 0.0

    def cycles_per_second(self, clock_period_ns: float) -> float:
        """Simulation speed, in clock cycles of ``clock_period_ns`` per wall-clock second."""
        if self.wall_seconds <= 0:
            return float("inf")
        return self.sim_time_ns / clock_period_ns / self.wall_seconds


@contextlib.contextmanager
def _verilator_environ(**extra: str) -> Iterator[None]:
    # cocotb's runner finds verilator with shutil.which and hands os.environ to make and the
    # simulator, so the Verilator variables must be in this process's environment while it
    # runs; they are put back afterwards so that calling this has no lasting side effect.
    env = toolchain.verilator_env()
    wanted = {key: value for key, value in env.items() if os.environ.get(key) != value}
    wanted.update(extra)
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _absolute_sys_path() -> Iterator[None]:
    # cocotb's runner hands this process's sys.path to the simulator as PYTHONPATH, and the
    # simulator runs in test_dir: a relative entry ('' under `python -c`, '.') would name
    # another folder there, and the testbench, found here, or a module it imports from the same
    # tree (tests/cocotb_streams.py) would not be found there.
    saved = sys.path[:]
    sys.path[:] = [os.path.abspath(entry) for entry in saved]
    try:
        yield
    finally:
        sys.path[:] = saved


def _cocotb_version() -> str:
    try:
        return importlib.metadata.version("cocotb")
    except importlib.metadata.PackageNotFoundError as exc:
        raise toolchain.ToolchainError(
            "cocotb is missing: install the PyPI package 'cocotb' (pip install 'cocotb>=2.1')"
        ) from exc


def _build(verilog: str, name: str, build_args: Sequence[str]) -> Path:
    # cocotb 2.1's Verilator runner ignores build(always=False): every call runs Verilator and
    # make again. The cache's stamp is what skips a build here, and build() runs only into a
    # new folder.
    # The model links cocotb's VPI library by its absolute path (a RUNPATH), so another
    # installation of cocotb (another venv sharing the cache) needs its own build.
    version = _cocotb_version()  # a ToolchainError naming cocotb if it is missing
    import cocotb

    libs = str(Path(cocotb.__file__).resolve().parent / "libs")
    digest = hashlib.sha256()
    for part in (name, verilog, version, libs, verilator_version(), *_TIMESCALE, *build_args):
        digest.update(part.encode() + b"\0")
    folder = toolchain.cache_dir() / "cocotb" / f"{name}-{digest.hexdigest()[:16]}"

    def build(tmp: Path) -> None:
        from cocotb_tools.runner import get_runner

        source = tmp / f"{name}.v"
        source.write_text(verilog)
        log = tmp / "build.log"
        with _verilator_environ():
            runner = get_runner("verilator")
            try:
                runner.build(
                    sources=[source], hdl_toplevel=name, build_dir=tmp,
                    build_args=list(build_args), timescale=_TIMESCALE, log_file=log,
                )
            except (RuntimeError, SystemExit) as exc:
                raise build_failed(folder, log, f"Verilator could not build the cocotb model "
                                                f"of {name!r} ({exc})") from None

    return build_once(folder, build, what=f"{name} (cocotb)")


def _read_results(path: Path) -> tuple[int, int, list[str], float, float]:
    tests = skipped = 0
    failures: list[str] = []
    sim_ns = wall = 0.0
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        tests += 1
        wall += float(case.get("time", 0) or 0)
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        with contextlib.suppress(KeyError, TypeError, ValueError):  # skipped tests have none
            sim_ns += float(props["sim_time_stop"]) - float(props["sim_time_start"])
        if case.find("skipped") is not None:
            skipped += 1
        for tag in ("failure", "error"):
            element = case.find(tag)
            if element is not None:
                reason = (element.get("message") or element.text or tag).strip()
                if len(reason) > _REASON_CHARS:
                    reason = reason[:_REASON_CHARS] + " ..."
                seed = props.get("random_seed")
                seed_note = f" (COCOTB_RANDOM_SEED={seed})" if seed else ""
                failures.append(f"{case.get('name')}{seed_note}: {reason}")
    return tests, skipped, failures, sim_ns, wall


def run_cocotb(
    component: wiring.Component | Callable[[], wiring.Component],
    name: str,
    test_module: str,
    test_dir: Path,
    *,
    parameters: Mapping[str, object] | None = None,
    timeout_s: float | None = 600.0,
    testcase: str | Sequence[str] | None = None,
    seed: int | None = None,
    waves: bool = False,
    extra_env: Mapping[str, str] | None = None,
    build_args: Sequence[str] = COCOTB_BUILD_ARGS,
) -> CocotbResult:
    """Run the cocotb testbench ``test_module`` against ``component`` under Verilator.

    Parameters
    ----------
    component : wiring.Component or callable
        The design under test, or a function of no arguments that makes it.
    name : str
        Module name of the design; the testbench's ``dut``. Also names the build folder.
    test_module : str
        Dotted name of the testbench module, importable from this process's ``sys.path``
        (which the runner hands to the simulator, its entries made absolute), for example
        ``"tests.kernels.cocotb_crc32c"``. The testbench may import the shared stream models
        of ``tests/cocotb_streams.py`` (``from tests.cocotb_streams import TB``).
    test_dir : Path
        Where the simulation runs and writes its log and results; give each run its own
        (pytest's ``tmp_path``) so that parallel runs do not collide.
    parameters : mapping, optional
        Values for the testbench: each becomes the environment variable
        ``OFFLOAD_<NAME>`` (``{"width": 4}`` gives ``OFFLOAD_WIDTH=4``).
    timeout_s : float, optional
        Wall-time limit of the simulation (not of the build). Needs the ``timeout`` command
        (coreutils); without it the limit is not applied.
    testcase : str or sequence of str, optional
        Run only these cocotb tests.
    seed : int, optional
        ``COCOTB_RANDOM_SEED``, to repeat a failing run.
    waves : bool
        Write ``dump.vcd`` in ``test_dir``. Needs a model built with tracing, so it gets a build
        folder of its own.
    extra_env : mapping, optional
        More environment variables for the simulator.
    build_args : sequence of str
        Verilator options (:data:`COCOTB_BUILD_ARGS` by default).

    Returns
    -------
    CocotbResult
        The counts and timings of a run in which no test failed.

    Raises
    ------
    sim.toolchain.ToolchainError
        Verilator, cocotb, make or a C++ compiler is missing.
    SimulationError
        The build failed, a cocotb test failed, or the simulator crashed or timed out. The
        message names the failed tests, their messages and random seed, and the log.
    """
    try:
        found = importlib.util.find_spec(test_module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ValueError(
            f"Testbench module {test_module!r} cannot be imported from sys.path, which the "
            "simulator's Python will use; run from the project root or add its folder"
        )
    if not isinstance(component, wiring.Component):
        component = component()
    build_args = tuple(build_args) + (("--trace",) if waves else ())
    build_dir = _build(to_verilog(component, name), name, build_args)

    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    log = test_dir / "sim.log"
    env = {f"OFFLOAD_{key.upper()}": str(value) for key, value in (parameters or {}).items()}
    env.update(extra_env or {})

    from cocotb_tools.runner import get_runner

    # SIM_CMD_PREFIX is cocotb's documented hook for wrapping the simulator command.
    timeout_tool = shutil.which("timeout")
    prefix = {}
    if timeout_s is not None and timeout_tool is not None:
        prefix["SIM_CMD_PREFIX"] = f"{timeout_tool} --kill-after=10 {timeout_s:g}"
    with _verilator_environ(**prefix), _absolute_sys_path():
        runner = get_runner("verilator")
        status: object = 0
        started = time.monotonic()
        try:
            runner.test(
                test_module=test_module, hdl_toplevel=name, hdl_toplevel_lang="verilog",
                build_dir=build_dir, test_dir=test_dir, results_xml=str(results),
                extra_env=env, testcase=testcase, seed=seed, waves=waves, log_file=log,
            )
        except SystemExit as exc:
            # Under pytest, cocotb's runner exits when a test fails; the results file says which.
            status = exc.code
        except RuntimeError as exc:
            # ... and it raises this when the simulator exits with an error (or is killed).
            status = str(exc)
        elapsed = time.monotonic() - started

    if timeout_s is not None and elapsed >= timeout_s:
        raise SimulationError(
            f"The cocotb simulation of {name!r} with {test_module} timed out after "
            f"{timeout_s:g} s. The end of its log ({log}):\n{log_tail(log, _LOG_TAIL_LINES)}"
        )
    if not results.is_file():
        raise SimulationError(
            f"The cocotb simulation of {name!r} with {test_module} ended abnormally ({status}) "
            f"and wrote no results. The end of its log ({log}):\n{log_tail(log, _LOG_TAIL_LINES)}"
        )
    tests, skipped, failures, sim_ns, wall = _read_results(results)
    if failures or status not in (0, None):
        listed = "\n".join(f"  {failure}" for failure in failures) or "  (none reported)"
        raise SimulationError(
            f"{len(failures)} of {tests} cocotb tests failed for {name!r} with {test_module} "
            f"(simulator exit status {status}; log: {log}):\n{listed}"
        )
    return CocotbResult(
        results_xml=results, log=log, build_dir=build_dir, tests=tests, skipped=skipped,
        sim_time_ns=sim_ns, wall_seconds=wall,
    )
