"""A fast Verilator harness for one byte-stream component: messages in, responses out.

The harness is a C++ main (``harness/stream_harness.cpp``) built with the model. It feeds the
messages back to back on ``i_stream`` (valid every cycle), takes ``o_stream`` every cycle, and
reports each response with the cycle counts and the wall time of the simulation loop, so that
``cycles / seconds`` is the speed of the model itself, not of Python or of process start.

Where ``data``, ``nbytes``, ``last`` and ``error`` sit in each payload is read from the
component's signature (the :func:`hdl.stream.byte_layout` of its streams) and written into a
generated header, so a change of layout changes the header, and with it the build's cache key.

Speed: for the CRC-32C kernel at 4 bytes a beat, a plain build ran about 2.7 M cycles/s. Three
things, each kept, brought it past 5 M: dropping the kernel's self-looped constant registers
from the Verilog (:func:`sim.verilog.remove_self_loops`, about +45%), POPCNT for the parities
(about +25%), and calling the model's evaluation without ``eval()``'s housekeeping (about +25%,
see the C++). ``--threads 2`` made it fifteen times slower: its threads meet every cycle, and a
design this small has too little work between. Evaluating only on the rising edge would save
one evaluation a cycle, but the ``ready`` seen before the edge would then be stale for any
component whose ``ready`` depends on its inputs, so both half-cycles are kept.
"""

from __future__ import annotations

import platform
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from amaranth.lib import data, wiring

from .build import SimulationError, build_model, model_folder
from .verilog import module_ports, remove_self_loops, to_verilog

__all__ = [
    "HARNESS_FLAGS", "HarnessResult", "StreamHarness", "harness_sources", "stream_layout_header",
    "verilator_name",
]

# Kernels compute GF(2) products as parities of masked words, which Verilator turns into
# __builtin_parity; without POPCNT, g++ expands each into a chain of shifts and XORs. Every
# x86-64 CPU since 2008 has POPCNT, and it made the CRC kernel about 25% faster. (-march=native
# was not measurably faster, and would tie a cached build to one machine's CPU.)
_CPU_FLAGS = " -mpopcnt" if platform.machine().lower() in ("x86_64", "amd64") else ""

#: Verilator options of harness builds. ``-O3`` (Verilator's own optimisation) and ``-O3`` for
#: g++ matter most; ``--x-assign fast`` / ``--x-initial fast`` let Verilator pick whatever value
#: is cheapest for X (Amaranth designs have none that matter, everything has an init value);
#: ``--no-timing`` because the harness drives the clock itself, so no delay needs scheduling.
HARNESS_FLAGS: tuple[str, ...] = (
    "-O3", "--x-assign", "fast", "--x-initial", "fast", "--no-timing",
    "-Wno-fatal", "-Wno-lint", "-Wno-style",
    "-CFLAGS", "-O3 -fno-stack-protector" + _CPU_FLAGS,
)

# Ports the C++ harness drives or reads, by the names amaranth.back.verilog gives them.
_REQUIRED_PORTS = (
    "clk", "rst",
    "i_stream__valid", "i_stream__ready", "i_stream__payload",
    "o_stream__valid", "o_stream__ready", "o_stream__payload",
)

# The C++ harness refers to those ports through these macros (see stream_layout_header).
_PORT_MACROS = {
    "I_VALID": "i_stream__valid", "I_READY": "i_stream__ready", "I_PAYLOAD": "i_stream__payload",
    "O_VALID": "o_stream__valid", "O_READY": "o_stream__ready", "O_PAYLOAD": "o_stream__payload",
}

_HARNESS_SOURCE = "stream_harness.cpp"

# The default "no progress" limit: far beyond any kernel latency, and at the harness's speed a
# hung design is reported in well under a second.
_MAX_IDLE_CYCLES = 100_000


@dataclass(frozen=True)
class HarnessResult:
    """What one :meth:`StreamHarness.run` measured.

    Members
    -------
    outputs : list of bytes
        The bytes of each response, in order.
    errors : list of bool
        Whether each response ended with ``error`` set.
    cycles : int
        Clock cycles from the end of reset to the last response beat, inclusive.
    seconds : float
        Wall time of the simulation loop alone (measured in the C++ with ``steady_clock``).
    active_cycles : int
        Cycles from the first input beat being accepted to the last response beat, inclusive.
    input_stalls : int
        Cycles in which an input beat was offered and not accepted (``valid`` and not
        ``ready``); 0 means the component took one beat every cycle.
    end_cycles : list of int
        For each response, the cycle of its last beat, counted from the first accepted beat.
    cpu_seconds : float
        CPU time of the simulation loop. Where other processes share the cores, ``seconds``
        includes the time spent waiting for one, and ``cycles / cpu_seconds`` is the figure
        that does not depend on the machine's load.
    """

    outputs: list[bytes]
    errors: list[bool]
    cycles: int
    seconds: float
    active_cycles: int = 0
    input_stalls: int = 0
    end_cycles: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0

    @property
    def cycles_per_second(self) -> float:
        """Simulation speed: ``cycles / seconds``."""
        return self.cycles / self.seconds if self.seconds > 0 else float("inf")


def _stream_layout(component: wiring.Component, port: str) -> data.StructLayout:
    try:
        member = component.signature.members[port]
        layout = member.signature.members["payload"].shape
    except (KeyError, AttributeError) as exc:
        raise TypeError(
            f"Component {component!r} has no stream port {port!r} with a payload; the stream "
            "harness needs i_stream and o_stream ports (hdl.stream.byte_stream)"
        ) from exc
    if not isinstance(layout, data.StructLayout):
        raise TypeError(f"Payload of {port} must be a data.StructLayout, not {layout!r}")
    missing = {"data", "nbytes", "last", "error"} - {name for name, _ in layout}
    if missing:
        raise TypeError(
            f"Payload of {port} lacks the field(s) {sorted(missing)} of hdl.stream.byte_layout"
        )
    if layout["data"].width % 8 or layout["data"].width > 64:
        raise ValueError(
            f"Data field of {port} must be whole bytes, at most 8, not "
            f"{layout['data'].width} bits"
        )
    return layout


def verilator_name(port: str) -> str:
    """The C++ member name Verilator gives a top-level port.

    Verilator keeps ``__`` for its own names and escapes every underscore that follows another
    as ``__05F``, so Amaranth's ``i_stream__valid`` is ``i_stream___05Fvalid`` in ``Vtop``.

    Parameters
    ----------
    port : str
        The Verilog port name.

    Returns
    -------
    str
    """
    out = []
    for index, char in enumerate(port):
        out.append("__05F" if char == "_" and index and port[index - 1] == "_" else char)
    return "".join(out)


def stream_layout_header(in_layout: data.StructLayout, out_layout: data.StructLayout) -> str:
    """The C++ header that tells the harness where each payload field sits.

    Parameters
    ----------
    in_layout, out_layout : data.StructLayout
        Payload layouts of ``i_stream`` and ``o_stream`` (see :func:`hdl.stream.byte_layout`).

    Returns
    -------
    str
        ``#define`` lines: the ports' C++ names (``I_VALID``, ``O_PAYLOAD``, ...), and
        ``IN_WIDTH`` (bytes per beat), ``IN_DATA_OFFSET``, ``IN_DATA_BITS``,
        ``IN_NBYTES_OFFSET``, ... and the same with ``OUT_``.
    """
    lines = ["// Generated by sim/harness.py from the component's payload layouts.", "#pragma once"]
    for macro, port in _PORT_MACROS.items():
        lines.append(f"#define {macro} {verilator_name(port)}")
    for prefix, layout in (("IN", in_layout), ("OUT", out_layout)):
        lines.append(f"#define {prefix}_WIDTH {layout['data'].width // 8}")
        lines.append(f"#define {prefix}_PAYLOAD_BITS {layout.size}")
        for name in ("data", "nbytes", "last", "error"):
            lines.append(f"#define {prefix}_{name.upper()}_OFFSET {layout[name].offset}")
            lines.append(f"#define {prefix}_{name.upper()}_BITS {layout[name].width}")
    return "\n".join(lines) + "\n"


class StreamHarness:
    """A built model of a byte-stream component, and the means to stream messages through it.

    Use :meth:`for_component` to build one (or reuse a cached build).

    Parameters
    ----------
    binary : Path
        The harness executable.
    name : str
        Module name of the component, for messages.
    width : int
        Bytes per input beat.

    Members
    -------
    binary : Path
        The harness executable.
    folder : Path
        Its build folder in the cache.
    """

    def __init__(self, binary: Path, name: str, width: int):
        self.binary = Path(binary)
        self.folder = self.binary.parent
        self.name = name
        self.width = width

    @classmethod
    def for_component(
        cls,
        component: wiring.Component | Callable[[], wiring.Component],
        name: str,
        width: int | None = None,
        *,
        flags: Sequence[str] = HARNESS_FLAGS,
    ) -> StreamHarness:
        """Build the harness for ``component`` (or take it from the build cache).

        Parameters
        ----------
        component : wiring.Component or callable
            The component, or a function of no arguments that makes it.
        name : str
            Module name; also names the build folder.
        width : int, optional
            Bytes per beat the caller expects; checked against the component's ``i_stream``.
        flags : sequence of str
            Verilator options, :data:`HARNESS_FLAGS` unless a measurement asks otherwise.

        Returns
        -------
        StreamHarness
        """
        recipe, in_width = _recipe(component, name, width, flags)
        folder = build_model(**recipe)
        return cls(folder / name, name, in_width)

    @staticmethod
    def cached_folder(
        component: wiring.Component | Callable[[], wiring.Component],
        name: str,
        width: int | None = None,
        *,
        flags: Sequence[str] = HARNESS_FLAGS,
    ) -> Path:
        """The build folder :meth:`for_component` uses, without building anything.

        The model is already built when the folder holds :data:`sim.build.STAMP`. Parameters
        are those of :meth:`for_component`.

        Returns
        -------
        Path
        """
        recipe, _ = _recipe(component, name, width, flags)
        return model_folder(**recipe)

    def run(
        self,
        messages: Sequence[bytes],
        *,
        timeout_s: float | None = 300.0,
        max_idle_cycles: int = _MAX_IDLE_CYCLES,
    ) -> HarnessResult:
        """Stream ``messages`` through the model back to back and collect one response each.

        Parameters
        ----------
        messages : sequence of bytes
            Request messages, in order.
        timeout_s : float, optional
            Wall-time limit of the whole run.
        max_idle_cycles : int
            The run fails when neither stream moves for this many cycles (a hung design).

        Returns
        -------
        HarnessResult

        Raises
        ------
        SimulationError
            The model hung, timed out or crashed.
        """
        with tempfile.TemporaryDirectory(prefix="offload-harness-") as tmp:
            in_path, out_path = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
            with in_path.open("wb") as f:
                f.write(struct.pack("<I", len(messages)))
                for message in messages:
                    message = bytes(message)
                    f.write(struct.pack("<I", len(message)))
                    f.write(message)
            command = [str(self.binary), str(in_path), str(out_path), str(max_idle_cycles)]
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, timeout=timeout_s, check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise SimulationError(
                    f"The {self.name} harness did not finish {len(messages)} messages in "
                    f"{timeout_s} s"
                ) from exc
            if result.returncode != 0:
                raise SimulationError(
                    f"The {self.name} harness failed (exit status {result.returncode}): "
                    f"{result.stderr.strip() or result.stdout.strip()}"
                )
            return _parse_output(out_path.read_bytes())


def _recipe(
    component: wiring.Component | Callable[[], wiring.Component],
    name: str,
    width: int | None,
    flags: Sequence[str],
) -> tuple[dict, int]:
    """The arguments of :func:`build_model` for a harness of ``component``, and its width."""
    if not isinstance(component, wiring.Component):
        component = component()
    in_layout = _stream_layout(component, "i_stream")
    out_layout = _stream_layout(component, "o_stream")
    in_width = in_layout["data"].width // 8
    if width is not None and width != in_width:
        raise ValueError(
            f"Width {width} was asked for, but {component!r} takes {in_width}-byte beats"
        )
    # The harness only measures and checks the ports, so it may run the equivalent Verilog
    # that Verilator simulates fastest (see remove_self_loops).
    verilog, _ = remove_self_loops(to_verilog(component, name))
    missing = set(_REQUIRED_PORTS) - set(module_ports(verilog, name))
    if missing:
        raise TypeError(
            f"Module {name!r} lacks the port(s) {sorted(missing)}; a component with no "
            "synchronous logic has no clk/rst and cannot be clocked by the harness"
        )
    recipe = dict(
        verilog=verilog, top=name, kind="stream", flags=tuple(flags),
        extra_sources=[
            *harness_sources(_HARNESS_SOURCE),
            ("stream_layout.h", stream_layout_header(in_layout, out_layout)),
        ],
    )
    return recipe, in_width


def harness_sources(main: str, *headers: str) -> list[tuple[str, str]]:
    """``(name, text)`` of the C++ harness ``main`` in ``sim/harness/``, the headers that
    every harness shares, and ``headers`` of that folder too, for
    :func:`sim.build.build_model`'s ``extra_sources``."""
    folder = resources.files(__package__).joinpath("harness")
    return [(name, folder.joinpath(name).read_text())
            for name in (main, "fast_eval.h", *headers)]


def _parse_output(raw: bytes) -> HarnessResult:
    view = memoryview(raw)
    (count,) = struct.unpack_from("<I", view, 0)
    offset = 4
    outputs, errors, end_cycles = [], [], []
    for _ in range(count):
        error, length, end_cycle = struct.unpack_from("<BIQ", view, offset)
        offset += 13
        outputs.append(bytes(view[offset:offset + length]))
        offset += length
        errors.append(bool(error))
        end_cycles.append(end_cycle)
    cycles, active, stalls, seconds, cpu_seconds = struct.unpack_from("<QQQdd", view, offset)
    return HarnessResult(
        outputs=outputs, errors=errors, cycles=cycles, seconds=seconds,
        active_cycles=active, input_stalls=stalls, end_cycles=end_cycles,
        cpu_seconds=cpu_seconds,
    )
