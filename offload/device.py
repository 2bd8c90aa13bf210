"""``Device``: every kernel as an attribute, the same result wherever the call runs.

A device has a *backend* that runs kernels in gateware (a board or a virtual board behind the
link) or none at all (``"cpu"``). A call goes to the backend when the backend has the kernel;
otherwise, or when the backend fails, the fallback policy decides: ``"auto"`` runs the CPU path,
counts it and logs the cause once; ``"never"`` raises :class:`DeviceError`. A stateful kernel
never falls back (the CPU's state is not the board's): it raises :class:`DeviceError` whatever
the policy. A :class:`KernelError` (the kernel found the request malformed) is a result: raised
alike by the CPU path and the gateware, never a reason to fall back.

A call never returns a result that differs from the CPU path's: the link below resynchronises
after any failed exchange, so a response is only ever matched to its own request, and a response
that cannot be decoded is treated as a failed exchange, never passed on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from . import kernels
from .errors import DeviceError, KernelError, KernelNotFound
from .kernels import KernelModel, KernelSpec, Operation, Response

__all__ = ["Device", "Backend", "FALLBACK_POLICIES", "open_device", "check_spec"]

log = logging.getLogger("offload")

FALLBACK_POLICIES = ("auto", "never")


class Backend(Protocol):
    """What runs kernels in gateware. Implemented by the link driver."""

    #: Names of the kernels the gateware has.
    kernels: frozenset[str]

    def kernel_params(self, name: str) -> dict[str, int]:
        """The parameters the gateware's kernel ``name`` was built with."""

    def run(self, spec: KernelSpec, op: Operation, messages: Sequence[bytes],
            params: Mapping[str, int]) -> list[Response]:
        """Run request ``messages`` of ``op`` on kernel ``spec``; each message's response.

        Raises :class:`DeviceError` if the call could not be completed.
        """

    def reset(self, spec: KernelSpec) -> None: ...

    def counters(self) -> dict[str, Any]: ...

    def invalidate(self, reason: str) -> None:
        """Distrust the link after a response that could not be decoded."""

    def close(self) -> None: ...


class Device:
    """A place to run kernels. Made by :func:`offload.open`.

    Every kernel in :data:`offload.kernels.KERNELS` is an attribute of the device. A kernel
    with one operation is called as ``device.crc32c(data)``; one with several as
    ``device.<kernel>.<operation>(...)``. Every operation takes a batch as well as one record.

    A device is safe to share between threads. Calls that go to the gateware are serialised
    (one exchange at a time on the link, each call answered with its own response); calls on
    the CPU path of stateless kernels run concurrently. A device whose link failed is tried
    again on later calls: the link reconnects and resynchronises, backing off while the device
    stays away, and :meth:`stats` counts the reconnects.

    Parameters
    ----------
    spec : str
        What was opened (for messages and :meth:`stats`).
    backend : Backend or None
        The gateware; None for the CPU.
    fallback : ``"auto"`` or ``"never"``
    params : dict, optional
        ``{kernel: {parameter: value}}``: on the CPU, the parameters its models take; on a
        board, what the caller expects the gateware to have been built with (a device built
        otherwise is a :class:`DeviceError` at once, never a silent mismatch).
    """

    def __init__(self, spec: str, backend: Backend | None = None, *, fallback: str = "auto",
                 params: Mapping[str, Mapping[str, object]] | None = None):
        if fallback not in FALLBACK_POLICIES:
            raise ValueError(
                f"fallback must be one of {', '.join(map(repr, FALLBACK_POLICIES))}, "
                f"not {fallback!r}"
            )
        self.spec = spec
        self.fallback = fallback
        self._backend = backend
        self._counts: Counter[tuple[str, str]] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()  # guards the counts (the backend serialises its calls)
        self._model_lock = threading.RLock()  # one call at a time on a stateful CPU model
        self._models: dict[str, KernelModel] = {}
        self._params: dict[str, dict[str, int]] = {}
        self._closed = False
        #: The virtual board this device started (``offload.open("sim")``), else None.
        self.virtual_board = None
        for name, expected in (params or {}).items():
            spec_ = kernels.get(name)
            resolved = spec_.resolve(expected)  # checks names and limits
            if backend is not None and name in backend.kernels:
                have = backend.kernel_params(name)
                # Only what the caller named: the rest is the device's to choose.
                wanted = {key: resolved[key] for key in expected}
                if {key: have.get(key) for key in wanted} != wanted:
                    raise DeviceError(
                        f"{name} on {spec!r} is built with {have}, not the {wanted} asked "
                        f"for: rebuild the device with offload build --kernel "
                        f"{name}:" + ",".join(f"{k}={v}" for k, v in wanted.items()))
            self._params[name] = resolved

    # -- what it has -------------------------------------------------------------------------

    @property
    def gateware_kernels(self) -> frozenset[str]:
        """Kernels this device runs in gateware (empty on the CPU device)."""
        return self._backend.kernels if self._backend is not None else frozenset()

    @property
    def backend(self) -> Backend | None:
        return self._backend

    def params(self, name: str) -> dict[str, int]:
        """The parameters kernel ``name`` has on this device (its gateware's, on a board)."""
        spec = kernels.get(name)
        if self._backend is not None and name in self._backend.kernels:
            return self._backend.kernel_params(name)
        if name not in self._params:
            self._params[name] = spec.resolve()
        return self._params[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            spec = kernels.get(name)
        except KernelNotFound:
            raise AttributeError(f"{type(self).__name__!r} has no attribute or kernel "
                                 f"{name!r}") from None
        return _KernelHandle(self, spec)

    def __dir__(self):
        return [*super().__dir__(), *(spec.name for spec in kernels.KERNELS)]

    # -- calls -------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, op: str | None = None, **kwargs: Any) -> Any:
        """Run operation ``op`` (the only one, if None) of kernel ``name`` on ``args``;
        ``device.<name>(...)`` and ``device.<name>.<op>(...)`` are the same call."""
        spec = kernels.get(name)
        operation = spec.operation(op)
        if self._closed:
            raise DeviceError(f"device {self.spec!r} is closed")
        params = self.params(name)
        # Checks the arguments before anything is sent: TypeError/ValueError for bad ones.
        messages = operation.encode(params, *args, **kwargs)
        if self._backend is None:
            result = self._on_cpu(spec, operation, params, messages, args, kwargs)
            self._count(name, "cpu")
            return result
        if name not in self._backend.kernels:
            return self._fall_back(spec, operation, messages, args, kwargs,
                                   "the device has no such kernel")
        try:
            responses = self._backend.run(spec, operation, messages, params)
            try:
                result = spec.result(operation, params, responses, args, kwargs)
            except KernelError:
                self._count(name, "kernel_errors")
                raise
            except ValueError as exc:
                # The frames were intact (CRC) but the answer is not one this kernel gives:
                # never pass it on, and distrust the link until it is resynchronised.
                self._backend.invalidate(f"{name} answered something it cannot: {exc}")
                raise DeviceError(f"{name} on {self.spec!r} gave a malformed response: "
                                  f"{exc}") from exc
        except DeviceError as exc:
            return self._fall_back(spec, operation, messages, args, kwargs, str(exc), exc)
        self._count(name, "gateware")
        return result

    def reset(self, name: str) -> None:
        """Return kernel ``name`` to its power-on state, where it runs (exactly once)."""
        spec = kernels.get(name)
        if self._closed:
            raise DeviceError(f"device {self.spec!r} is closed")
        if self._backend is not None and name in self._backend.kernels:
            self._backend.reset(spec)
        with self._model_lock:
            if name in self._models:
                self._models[name].reset()

    def _model(self, spec: KernelSpec) -> KernelModel:
        with self._model_lock:
            if spec.name not in self._models:
                self._models[spec.name] = spec.model(self.params(spec.name))
            return self._models[spec.name]

    def _on_cpu(self, spec: KernelSpec, op: Operation, params, messages, args, kwargs) -> Any:
        model = self._model(spec)
        if spec.stateful:
            with self._model_lock:
                responses = [model.run(op.name, m) for m in messages]
        else:
            responses = [model.run(op.name, m) for m in messages]
        try:
            return spec.result(op, params, responses, args, kwargs)
        except KernelError:
            self._count(spec.name, "kernel_errors")
            raise

    def _count(self, name: str, where: str) -> None:
        with self._lock:
            self._counts[(name, where)] += 1

    def _fall_back(self, spec: KernelSpec, op: Operation, messages, args, kwargs, cause: str,
                   exc: Exception | None = None) -> Any:
        if self.fallback == "never" or spec.stateful:
            self._count(spec.name, "errors")
            advice = ("a stateful kernel never runs on the CPU for a device, whose state it "
                      "does not have" if spec.stateful else
                      "open the device with fallback='auto' to run it on the CPU instead")
            raise DeviceError(
                f"{spec.name} could not run on device {self.spec!r}: {cause} ({advice})"
            ) from exc
        key = (spec.name, cause)
        with self._lock:
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.warning("%s on %s runs on the CPU: %s", spec.name, self.spec, cause)
        result = self._on_cpu(spec, op, self.params(spec.name), messages, args, kwargs)
        self._count(spec.name, "fallback")
        return result

    # -- bookkeeping -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ran where: per kernel, calls in gateware, on the CPU by choice, fallbacks,
        errors (calls that raised because the device failed and could not fall back) and
        kernel_errors (calls whose request the kernel found malformed).

        On a linked device the link's own figures (retries, timeouts, resyncs, reconnects, and
        whether it is ``ready``) are under ``link``.
        """
        per_kernel = {}
        with self._lock:
            counts = dict(self._counts)
        for spec in kernels.KERNELS:
            row = {where: counts.get((spec.name, where), 0)
                   for where in ("gateware", "cpu", "fallback", "errors", "kernel_errors")}
            if any(row.values()):
                per_kernel[spec.name] = row
        result: dict[str, Any] = {
            "device": self.spec,
            "fallback_policy": self.fallback,
            "kernels": per_kernel,
            "fallbacks": sum(row["fallback"] for row in per_kernel.values()),
            "errors": sum(row["errors"] for row in per_kernel.values()),
        }
        if self._backend is not None:
            result["link"] = self._backend.counters()
        return result

    def close(self) -> None:
        """Release the device (and stop a virtual board this device started)."""
        if not self._closed:
            self._closed = True
            if self._backend is not None:
                self._backend.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ", ".join(sorted(self.gateware_kernels)) or "none"
        return f"<Device {self.spec!r} gateware kernels: {where}; fallback={self.fallback!r}>"


class _OperationHandle:
    def __init__(self, device: Device, spec: KernelSpec, op: Operation):
        self._device, self._spec, self._op = device, spec, op
        self.__doc__ = op.doc or f"{spec.name}.{op.name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._device.call(self._spec.name, *args, op=self._op.name, **kwargs)

    def __repr__(self) -> str:
        return f"<{self._spec.name}.{self._op.name} on {self._device.spec!r}>"


class _KernelHandle:
    """``device.<kernel>``: callable for a kernel with one operation, and an attribute per
    operation (``device.<kernel>.<operation>(...)``)."""

    def __init__(self, device: Device, spec: KernelSpec):
        self._device, self._spec = device, spec
        self.__doc__ = spec.summary

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._device.call(self._spec.name, *args, **kwargs)

    def __getattr__(self, name: str) -> _OperationHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return _OperationHandle(self._device, self._spec, self._spec.operation(name))
        except KernelNotFound as exc:
            raise AttributeError(str(exc)) from None

    def __dir__(self):
        return [op.name for op in self._spec.operations]

    def __repr__(self) -> str:
        ops = ", ".join(op.name for op in self._spec.operations)
        return f"<kernel {self._spec.name} ({ops}) on {self._device.spec!r}>"


#: Virtual boards by name, and the board each is: ``sim:BOARD`` names any board.
SIM_BOARDS = {"sim": "icebreaker", "udp-sim": "colorlight-5a75b"}

_LINK_PREFIXES = ("serial://", "socket://", "/dev/", "COM", "rfc2217://", "loop://", "udp://")


def check_spec(spec: object) -> None:
    """Raise :class:`DeviceError` unless ``spec`` is a device spec :func:`open_device` takes.

    Cheap: it opens nothing, so a command checks its ``--device`` before long work starts.
    """
    if not isinstance(spec, str):
        raise DeviceError(f"a device spec is a string such as 'cpu' or 'sim', not {spec!r}")
    if spec in ("cpu", "auto", *SIM_BOARDS) or spec.startswith(_LINK_PREFIXES):
        return
    if spec.startswith("sim:"):
        from boards import get_board

        get_board(spec.partition(":")[2])  # raises BoardError naming the boards there are
        return
    raise DeviceError(
        f"unknown device {spec!r}: use 'cpu', 'sim' (or 'sim:BOARD'), 'udp-sim' (a virtual "
        "board on Ethernet), 'auto', a serial port "
        "such as 'serial:///dev/ttyUSB1', 'socket://HOST:PORT', or a board on Ethernet, "
        "'udp://HOST:PORT'"
    )


def open_device(spec: str = "cpu", *, fallback: str = "auto", baudrate: int | None = None,
                timeout: float = 0.5, retries: int = 8,
                params: Mapping[str, Mapping[str, object]] | None = None,
                kernels: Sequence[str] | None = None) -> Device:
    """Open a device. See :func:`offload.open`.

    ``kernels`` names the kernels a virtual board (``"sim"``) is built with: by default every
    kernel a device has by default, and every kernel given ``params``. Other devices have what
    they were built with.
    """
    if fallback not in FALLBACK_POLICIES:
        raise ValueError(
            f"fallback must be one of {', '.join(map(repr, FALLBACK_POLICIES))}, not {fallback!r}"
        )
    check_spec(spec)
    from . import kernels as registry

    for name, values in (params or {}).items():
        registry.get(name).resolve(values)  # a clear error before anything is opened or built
    for name in kernels or ():
        registry.get(name)
    if spec == "cpu":
        return Device("cpu", None, fallback=fallback, params=params)
    if spec in SIM_BOARDS or spec.startswith("sim:"):
        board = SIM_BOARDS.get(spec) or spec.partition(":")[2]
        return _open_sim(spec, board, fallback=fallback, timeout=timeout, retries=retries,
                         params=params, kernel_names=kernels)
    if spec == "auto":
        return _open_auto(fallback=fallback, baudrate=baudrate, timeout=timeout, params=params)
    return _open_link(spec, fallback=fallback, baudrate=baudrate, timeout=timeout,
                      retries=retries, params=params)


#: Links whose rate is not a UART's: a virtual board's TCP socket, pyserial's loopback, UDP.
_NO_BAUD = ("socket://", "loop://", "udp://")


def _open_link(url: str, *, fallback: str, baudrate: int | None, timeout: float,
               retries: int, spec: str | None = None, on_close=None, params=None) -> Device:
    """A device on ``url``. Not told the rate of a UART, it tries the boards' link rate
    (3 Mbaud), then their fallback (1 Mbaud, a device that could not meet the PLL's clock):
    a wrong rate is a second of no answer, with one retry."""
    from boards.registry import link_rates

    from .link.driver import LinkBackend, LinkFailure
    from .link.transport import SerialTransport, UdpTransport

    rates = [baudrate] if baudrate or url.startswith(_NO_BAUD) else link_rates()
    for n, rate in enumerate(rates):
        last = n == len(rates) - 1
        transport = (UdpTransport(url) if url.startswith("udp://")
                     else SerialTransport(url, baudrate=rate or link_rates()[0]))
        try:
            backend = LinkBackend(transport, timeout=timeout,
                                  retries=retries if last else min(retries, 1),
                                  on_close=on_close)
            break
        except LinkFailure as exc:
            transport.close()
            if last:
                if on_close is not None:
                    on_close()
                raise
            log.info("%s: no answer at %s baud (%s); trying %s", url, f"{rate:,}", exc,
                     f"{rates[n + 1]:,}")
        except BaseException:
            transport.close()
            if on_close is not None:
                on_close()
            raise
    try:
        return Device(spec or url, backend, fallback=fallback, params=params)
    except BaseException:
        backend.close()
        raise


def _open_sim(spec: str, board: str, *, fallback: str, timeout: float, retries: int,
              params=None, kernel_names=None) -> Device:
    from .gateware import device_design

    vboard = device_design(board, kernel_names, params=params).virtual_board().start()
    device = _open_link(vboard.url, fallback=fallback, baudrate=None, timeout=timeout,
                        retries=retries, spec=spec, on_close=vboard.stop, params=params)
    device.virtual_board = vboard
    return device


def _open_auto(*, fallback: str, baudrate: int | None, timeout: float, params=None) -> Device:
    """The first USB serial port that answers with an offload manifest; else the CPU."""
    from serial.tools import list_ports

    for port in list_ports.comports():
        if port.vid is None:
            continue
        try:
            return _open_link(port.device, fallback=fallback, baudrate=baudrate,
                              timeout=min(timeout, 0.2), retries=1, params=params)
        except DeviceError as exc:
            log.info("auto: %s is not an offload device: %s", port.device, exc)
    log.warning("auto: no offload board found on a serial port; calls run on the CPU")
    return Device("cpu", None, fallback=fallback, params=params)
