"""The kernel registry: every kernel, listed once.

The mux, the device manifest, the CLI's kernel list, the bench, the HIL suite and the ``Device``
methods are all derived from :data:`KERNELS`. A kernel of this package is its host module (which
defines its :class:`KernelSpec`), its gateware module and its tests, and one line in
``_BUILTIN`` below; a kernel from another package registers through the entry-point group
``offload.kernels`` (an entry point that loads a :class:`KernelSpec`) and touches nothing here.
"""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from hdl.link import protocol as p

from ..errors import KernelError, KernelNotFound, OffloadError

__all__ = ["Param", "Operation", "KernelSpec", "KernelModel", "Response", "KERNELS", "get",
           "by_id", "registry", "ENTRY_POINT_GROUP", "ParamError", "same_result"]

log = logging.getLogger("offload")

ENTRY_POINT_GROUP = "offload.kernels"


class ParamError(OffloadError, ValueError):
    """A kernel parameter that the kernel does not have, or a value outside its limits."""


@dataclass(frozen=True)
class Param:
    """One build-time parameter of a kernel: its default and what values it may take.

    ``choices`` (if given) lists every allowed value; otherwise ``low``/``high`` bound it.

    A parameter that is not a number (a protobuf kernel's schema) has a ``convert``:
    ``convert(value) -> str`` takes whatever a caller may give (a string from the command line,
    an object from Python) and answers its canonical text, the value the manifest, the build
    cache and the module names carry; it raises :class:`ParamError` for a value it cannot take.
    """

    default: int | str
    doc: str = ""
    low: int | None = None
    high: int | None = None
    choices: tuple[int, ...] | None = None
    convert: Callable[[object], str] | None = None

    def check(self, kernel: str, name: str, value: object) -> int | str:
        if self.convert is not None:
            return self.convert(value)
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise ParamError(f"{kernel} parameter {name} takes an integer, not "
                                 f"{value!r}") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParamError(f"{kernel} parameter {name} takes an integer, not {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"{kernel} parameter {name} must be one of "
                             f"{', '.join(map(str, self.choices))}, not {value}")
        if (self.low is not None and value < self.low) or \
                (self.high is not None and value > self.high):
            raise ParamError(f"{kernel} parameter {name} must be from {self.low} to "
                             f"{self.high}, not {value}")
        return value

    def describe(self) -> str:
        if self.convert is not None:
            return f"{self.default}"
        if self.choices is not None:
            return f"{self.default} (one of {', '.join(map(str, self.choices))})"
        return f"{self.default} ({self.low}..{self.high})"


@dataclass(frozen=True)
class Response:
    """What a kernel answered one request message with: its bytes, and its ``error`` flag."""

    data: bytes
    error: bool = False


class KernelModel(Protocol):
    """A kernel's CPU path: the reference behaviour, byte for byte the gateware's.

    Made once per ``Device`` (so a stateful kernel's state on the CPU is that device's own).
    """

    def run(self, op: str, request: bytes) -> Response:
        """Answer one request message of operation ``op`` as the gateware would."""

    def reset(self) -> None:
        """Back to the state after power-on (a stateless model does nothing)."""


@dataclass(frozen=True)
class Operation:
    """One operation of a kernel: its opcode, its codec, and how long its answers can be.

    Parameters
    ----------
    name : str
        ``device.<kernel>.<name>(...)``.
    encode : callable
        ``encode(params, *args, **kwargs) -> list[bytes]``: a call's arguments to its request
        messages (one message for a single record or a batch the kernel streams; one message
        per record where each record is its own message). Checks the arguments and raises
        ``TypeError``/``ValueError`` for bad ones, before anything is sent.
    decode : callable
        ``decode(params, responses, *args, **kwargs) -> result``: the response of each
        message (the same for the CPU path and the gateware) to the call's result.
    error : callable
        ``error(params, response, *args, **kwargs) -> str``: what was wrong with a request the
        kernel flagged as malformed, for the :class:`KernelError` (same text on every device).
    max_response : callable
        ``max_response(params, request_len) -> int``: the most bytes the kernel can answer a
        request message of ``request_len`` bytes with.
    expansion : float
        The most response bytes one request byte can give while the message streams in (0 for
        a kernel that answers only at the end); ``holdback`` the most response bytes it may
        hold from one frame into the next (a number, or ``holdback(params) -> int`` where the
        build decides, as a scheduler's queues do). The host sizes frames with them.
    """

    name: str
    encode: Callable[..., list[bytes]]
    decode: Callable[..., Any]
    max_response: Callable[[Mapping[str, int], int], int]
    error: Callable[..., str] = field(default=lambda params, response, *a, **k: "malformed")
    expansion: float = 0.0
    holdback: int | Callable[[Mapping[str, Any]], int] = 0
    doc: str = ""

    def holdback_for(self, params: Mapping[str, Any]) -> int:
        """:attr:`holdback` for a build with ``params``."""
        return self.holdback(params) if callable(self.holdback) else self.holdback


@dataclass(frozen=True)
class KernelSpec:
    """One kernel: how the link names it, its operations, parameters and implementations.

    Attributes
    ----------
    name : str
        The Python name (``Device.<name>``) and the CLI name.
    id : int
        The kernel id on the link (1-255; 0 is the system kernel).
    version : int
        Bumped whenever the gateware's behaviour or its codec changes.
    summary : str
        One line for the kernel list.
    gateware : str
        ``"module:factory"``; ``factory(**params)`` returns the ``wiring.Component`` (ports
        ``i_stream: In(request_stream(width))``, ``o_stream: Out(byte_stream(width))``, an
        ``operations`` tuple naming the opcodes in order, and a ``width``).
    model : callable
        ``model(params) -> KernelModel``: the CPU path, one per device.
    operations : tuple of Operation
        In opcode order. A kernel with one operation is called as ``device.<name>(...)``.
    params : dict of str to Param
        Build-time parameters; ``width`` (bytes per beat) if the kernel has a choice of widths.
    board_params : dict of str to dict
        Defaults per board that differ from the parameters' own (a small FPGA, a big one).
    proof_params : dict of str to int
        Parameters its proof of the stream contract builds it with, where the defaults would
        make the bounded check too deep (a table cleared after reset in ``slots`` cycles is
        proved with a few slots; the logic is the same).
    bench : callable, optional
        ``bench(params, op, args) -> {"items": n, "unit": "messages", "rows": [(what, value,
        unit, note), ...]}``: for a kernel whose calls hold several records, how many the bench
        workload's call ``args`` holds (the bench then shows rates per item), rows measured
        on this CPU with the library the kernel is compared with, and optionally
        ``"reference": (name, items per second)``, the library's rate the kernel's is set
        against. A hook whose rows cost much (builds of their own) may take a keyword
        ``rows=False`` and then answer the items, the unit and the reference alone, for
        ``offload bench --sweep``.
    fit : callable, optional
        ``fit(params) -> (unit, amount, ((params, amount), (params, amount)))``: for a kernel
        whose size grows with something its parameters describe (a protobuf schema's fields),
        how many of ``unit`` these parameters have, and two builds with fewer and more of them.
        ``offload build --per-kernel`` builds both alone (cached), and says how many more of
        ``unit`` the room left in the device holds at the cost of one measured between them.
    default : bool
        Whether a device has it when no kernels are named (``offload.open("sim")``,
        ``offload build`` without ``--kernel``). A kernel built for one use, as the protobuf
        kernel is for one schema, is in a device only when it is named or given parameters.
    stateful : bool
        A stateful kernel keeps state where it runs: its CPU model is made per device, its
        calls never fall back to the CPU (the CPU's state is not the board's), they are never
        run twice, and ``device.reset(name)`` resets it.
    workload : callable
        ``workload(params, size, rng) -> (operation name, args)``: a call of about ``size``
        request bytes, for the bench.
    strategies : callable
        ``strategies(params) -> {operation name: hypothesis strategy of args tuples}``, for the
        HIL suite (hypothesis is imported only when it is called).
    """

    name: str
    id: int
    version: int
    summary: str
    gateware: str
    model: Callable[[Mapping[str, int]], KernelModel]
    operations: tuple[Operation, ...]
    workload: Callable[[Mapping[str, int], int, random.Random], tuple[str, tuple]]
    strategies: Callable[[Mapping[str, int]], dict[str, Any]]
    params: Mapping[str, Param] = field(default_factory=dict)
    board_params: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    proof_params: Mapping[str, int] = field(default_factory=dict)
    stateful: bool = False
    default: bool = True
    bench: Callable[[Mapping[str, Any], str, tuple], Mapping[str, Any]] | None = None
    fit: Callable[[Mapping[str, Any]], tuple[str, int, tuple]] | None = None

    # -- operations --------------------------------------------------------------------------

    def operation(self, name: str | None = None) -> Operation:
        """The operation ``name``; with none, the kernel's only one."""
        if name is None:
            if len(self.operations) != 1:
                raise TypeError(f"{self.name} has operations "
                                f"{', '.join(o.name for o in self.operations)}: call one, "
                                f"such as device.{self.name}.{self.operations[0].name}(...)")
            return self.operations[0]
        for op in self.operations:
            if op.name == name:
                return op
        raise KernelNotFound(f"{self.name} has no operation {name!r}; it has "
                             f"{', '.join(o.name for o in self.operations)}")

    def opcode(self, op: Operation) -> int:
        return self.operations.index(op)

    # -- parameters --------------------------------------------------------------------------

    def resolve(self, params: Mapping[str, object] | None = None, board: str | None = None
                ) -> dict[str, int]:
        """Every parameter's value: ``params``, else the board's default, else the kernel's.

        Raises :class:`ParamError` for a name the kernel does not have or a value outside its
        limits.
        """
        params = dict(params or {})
        unknown = set(params) - set(self.params)
        if unknown:
            have = ", ".join(self.params) or "none"
            raise ParamError(f"{self.name} has no parameter {', '.join(sorted(unknown))} "
                             f"(its parameters: {have})")
        values = {name: param.default for name, param in self.params.items()}
        if board is not None:
            values.update(self.board_params.get(board, {}))
        values.update(params)
        return {name: self.params[name].check(self.name, name, value)
                for name, value in values.items()}

    @property
    def widths(self) -> tuple[int, ...]:
        """Beat widths (bytes per cycle) the gateware can be built with."""
        width = self.params.get("width")
        return width.choices if width is not None and width.choices else (self.default_width,)

    @property
    def default_width(self) -> int:
        width = self.params.get("width")
        return width.default if width is not None else 1

    def width_params(self, width: int | None) -> dict[str, int]:
        """The parameters that build it ``width`` bytes a beat: ``{"width": width}`` for a
        kernel with a choice of widths, nothing for one without (or for no width)."""
        return {"width": width} if width is not None and "width" in self.params else {}

    def component(self, **params: object):
        """The gateware, built with ``params`` (the rest at their defaults)."""
        module, _, factory = self.gateware.partition(":")
        return getattr(importlib.import_module(module), factory)(**self.resolve(params))

    # -- the CPU path ------------------------------------------------------------------------

    def cpu(self, *args: Any, op: str | None = None, params: Mapping[str, int] | None = None,
            **kwargs: Any) -> Any:
        """A call on a fresh CPU model (for a stateful kernel, from its power-on state)."""
        model = self.model(self.resolve(params))
        return self.run_on_model(model, self.operation(op), self.resolve(params), args, kwargs)

    def run_on_model(self, model: KernelModel, op: Operation, params: Mapping[str, int],
                     args: tuple, kwargs: Mapping[str, Any]) -> Any:
        messages = op.encode(params, *args, **kwargs)
        return self.result(op, params, [model.run(op.name, m) for m in messages], args, kwargs)

    def result(self, op: Operation, params: Mapping[str, int], responses: Sequence[Response],
               args: tuple, kwargs: Mapping[str, Any]) -> Any:
        """The call's result from its responses, the same for the CPU path and the gateware;
        :class:`KernelError` if the kernel flagged a request as malformed."""
        for response in responses:
            if response.error:
                raise KernelError(self.name, op.name,
                                  op.error(params, response, *args, **kwargs))
        return op.decode(params, [r.data for r in responses], *args, **kwargs)


def same_result(a: Any, b: Any) -> bool:
    """Whether two call results are the same: ``==``, except that numpy arrays (records) are
    the same when their dtypes and bytes are, and a KernelError is the same as another with
    the same text."""
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and \
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, KernelError) or isinstance(b, KernelError):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and \
            all(same_result(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _builtin() -> list[KernelSpec]:
    from . import crc32c, paxos, protobuf, scheduling, varint

    return [crc32c.SPEC, varint.SPEC, protobuf.SPEC, paxos.ACCEPTOR, paxos.LEARNER,
            scheduling.SCHEDULER, scheduling.PIFO]


def _plugins() -> list[KernelSpec]:
    specs = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = entry.load()
        except Exception as exc:  # a broken plug-in must not take offload down with it
            log.warning("kernel plug-in %s (%s) does not load: %s", entry.name, entry.value,
                        exc)
            continue
        if callable(spec) and not isinstance(spec, KernelSpec):
            spec = spec()
        if not isinstance(spec, KernelSpec):
            log.warning("kernel plug-in %s is not a KernelSpec: %r", entry.name, spec)
            continue
        specs.append(spec)
    return specs


def _check_registry(specs: Sequence[KernelSpec]) -> tuple[KernelSpec, ...]:
    # Ids and names are the link's and the API's keys: a clash would be a silent misroute.
    kept: list[KernelSpec] = []
    for spec in specs:
        clash = next((k for k in kept if k.id == spec.id or k.name == spec.name), None)
        if clash is not None:
            log.warning("kernel %s (id %d) clashes with %s (id %d): not registered",
                        spec.name, spec.id, clash.name, clash.id)
            continue
        if not 1 <= spec.id <= 255:
            log.warning("kernel %s has id %d; ids are 1..255: not registered", spec.name,
                        spec.id)
            continue
        if not spec.name.isidentifier() or not spec.operations or \
                len(spec.operations) > p.MAX_OPERATIONS:
            log.warning("kernel %s: a name that is an identifier and 1 to %d operations are "
                        "needed: not registered", spec.name, p.MAX_OPERATIONS)
            continue
        kept.append(spec)
    return tuple(kept)


def registry() -> tuple[KernelSpec, ...]:
    """Every kernel: this package's, then those of installed plug-in packages.

    Loaded on first use, not when offload is imported: a plug-in package imports offload to
    define its kernel, and would not be loadable while offload itself is still being imported
    (a user who imports the plug-in first would lose it).
    """
    specs = globals().get("KERNELS")
    if specs is None:
        specs = _check_registry(_builtin() + _plugins())
        globals()["KERNELS"] = specs
    return specs


def __getattr__(name: str):
    if name == "KERNELS":  # offload.kernels.KERNELS: every kernel, loaded on first use
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> KernelSpec:
    """The kernel called ``name``; :class:`KernelNotFound` listing the known ones otherwise."""
    for spec in registry():
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in registry())
    raise KernelNotFound(f"no kernel named {name!r}; known kernels: {known}")


def by_id(kernel_id: int) -> KernelSpec:
    """The kernel whose link id is ``kernel_id``."""
    for spec in registry():
        if spec.id == kernel_id:
            return spec
    raise KernelNotFound(f"no kernel has id {kernel_id}")
