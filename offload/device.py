"""``Device``: one method per kernel, the same result wherever the call runs.

A device has a *backend* that runs kernels in gateware (a board or a virtual board behind the
link) or none at all (``"cpu"``). A call goes to the backend when the backend has the kernel;
otherwise, or when the backend fails, the fallback policy decides: ``"auto"`` runs the CPU path,
counts it and logs the cause once; ``"never"`` raises :class:`DeviceError`.

A call never returns a result that differs from the CPU path's: the link below resynchronises
after any failed exchange, so a response is only ever matched to its own request, and a response
that cannot be decoded is treated as a failed exchange, never passed on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Protocol

from . import kernels
from .errors import DeviceError
from .kernels import KernelSpec

__all__ = ["Device", "Backend", "FALLBACK_POLICIES", "open_device", "check_spec"]

log = logging.getLogger("offload")

FALLBACK_POLICIES = ("auto", "never")


class Backend(Protocol):
    """What runs kernels in gateware. Implemented by the link driver."""

    #: Names of the kernels the gateware has.
    kernels: frozenset[str]

    def run(self, spec: KernelSpec, request: bytes) -> bytes:
        """Send one request message to kernel ``spec`` and return its response message.

        Raises :class:`DeviceError` if the call could not be completed.
        """

    def counters(self) -> dict[str, Any]: ...

    def invalidate(self, reason: str) -> None:
        """Distrust the link after a response that could not be decoded."""

    def close(self) -> None: ...


class Device:
    """A place to run kernels. Made by :func:`offload.open`.

    Every kernel in :data:`offload.kernels.KERNELS` is a method of the device, for example
    ``device.crc32c(data)``.

    A device is safe to share between threads. Calls that go to the gateware are serialised
    (one exchange at a time on the link, each call answered with its own response); calls on
    the CPU path run concurrently. A device whose link failed is tried again on later calls:
    the link reconnects and resynchronises, backing off while the device stays away, and
    :meth:`stats` counts the reconnects.
    """

    def __init__(self, spec: str, backend: Backend | None = None, *, fallback: str = "auto"):
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
        self._closed = False
        #: The virtual board this device started (``offload.open("sim")``), else None.
        self.virtual_board = None

    # -- what it has -------------------------------------------------------------------------

    @property
    def gateware_kernels(self) -> frozenset[str]:
        """Kernels this device runs in gateware (empty on the CPU device)."""
        return self._backend.kernels if self._backend is not None else frozenset()

    @property
    def backend(self) -> Backend | None:
        return self._backend

    # -- calls -------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run kernel ``name`` on ``args``; ``device.<name>(...)`` is the same call."""
        spec = kernels.get(name)
        if self._closed:
            raise DeviceError(f"device {self.spec!r} is closed")
        if self._backend is None:
            result = spec.cpu(*args, **kwargs)  # the CPU path checks its own arguments
            self._count(name, "cpu")
            return result
        request = spec.encode(*args, **kwargs)  # checks the arguments before anything is sent
        if name not in self._backend.kernels:
            return self._fall_back(spec, args, kwargs, "the device has no such kernel")
        try:
            response = self._backend.run(spec, request)
            try:
                result = spec.decode(response)
            except ValueError as exc:
                # The frame was intact (CRC) but the answer is not one this kernel gives:
                # never pass it on, and distrust the link until it is resynchronised.
                self._backend.invalidate(f"{name} answered something it cannot: {exc}")
                raise DeviceError(f"{name} on {self.spec!r} gave a malformed response: "
                                  f"{exc}") from exc
        except DeviceError as exc:
            return self._fall_back(spec, args, kwargs, str(exc), exc)
        self._count(name, "gateware")
        return result

    def _count(self, name: str, where: str) -> None:
        with self._lock:
            self._counts[(name, where)] += 1

    def _fall_back(self, spec: KernelSpec, args, kwargs, cause: str,
                   exc: Exception | None = None) -> Any:
        if self.fallback == "never":
            self._count(spec.name, "errors")
            raise DeviceError(
                f"{spec.name} could not run on device {self.spec!r}: {cause} "
                "(open the device with fallback='auto' to run it on the CPU instead)"
            ) from exc
        key = (spec.name, cause)
        with self._lock:
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.warning("%s on %s runs on the CPU: %s", spec.name, self.spec, cause)
        self._count(spec.name, "fallback")
        return spec.cpu(*args, **kwargs)

    # -- bookkeeping -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ran where: per kernel, calls in gateware, on the CPU by choice, fallbacks, and
        errors (calls that raised because the device failed and fallback was off).

        On a linked device the link's own figures (retries, timeouts, resyncs, reconnects, and
        whether it is ``ready``) are under ``link``.
        """
        per_kernel = {}
        with self._lock:
            counts = dict(self._counts)
        for spec in kernels.KERNELS:
            row = {where: counts.get((spec.name, where), 0)
                   for where in ("gateware", "cpu", "fallback", "errors")}
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


def _kernel_method(spec: KernelSpec):
    def method(self: Device, *args: Any, **kwargs: Any) -> Any:
        return self.call(spec.name, *args, **kwargs)

    method.__name__ = spec.name
    method.__qualname__ = f"Device.{spec.name}"
    method.__doc__ = f"{spec.summary}.\n\nSee :func:`offload.kernels.{spec.name}.cpu`."
    return method


for _spec in kernels.KERNELS:
    setattr(Device, _spec.name, _kernel_method(_spec))


_LINK_PREFIXES = ("serial://", "socket://", "/dev/", "COM", "rfc2217://", "loop://")


def check_spec(spec: object) -> None:
    """Raise :class:`DeviceError` unless ``spec`` is a device spec :func:`open_device` takes.

    Cheap: it opens nothing, so a command checks its ``--device`` before long work starts.
    """
    if not isinstance(spec, str):
        raise DeviceError(f"a device spec is a string such as 'cpu' or 'sim', not {spec!r}")
    if spec in ("cpu", "sim", "auto") or spec.startswith(_LINK_PREFIXES):
        return
    if spec.startswith("sim:"):
        from boards import get_board

        get_board(spec.partition(":")[2])  # raises BoardError naming the boards there are
        return
    raise DeviceError(
        f"unknown device {spec!r}: use 'cpu', 'sim' (or 'sim:BOARD'), 'auto', a serial port "
        "such as 'serial:///dev/ttyUSB1', or 'socket://HOST:PORT'"
    )


def open_device(spec: str = "cpu", *, fallback: str = "auto", baudrate: int | None = None,
                timeout: float = 0.5, retries: int = 8) -> Device:
    """Open a device. See :func:`offload.open`."""
    if fallback not in FALLBACK_POLICIES:
        raise ValueError(
            f"fallback must be one of {', '.join(map(repr, FALLBACK_POLICIES))}, not {fallback!r}"
        )
    check_spec(spec)
    if spec == "cpu":
        return Device("cpu", None, fallback=fallback)
    if spec == "sim" or spec.startswith("sim:"):
        board = spec.partition(":")[2] or "icebreaker"
        return _open_sim(spec, board, fallback=fallback, timeout=timeout, retries=retries)
    if spec == "auto":
        return _open_auto(fallback=fallback, baudrate=baudrate, timeout=timeout)
    return _open_link(spec, fallback=fallback, baudrate=baudrate, timeout=timeout,
                      retries=retries)


def _default_baud() -> int:
    from boards import BOARDS

    rates = {board.link_baud for board in BOARDS.values()}
    return rates.pop() if len(rates) == 1 else 115200


def _open_link(url: str, *, fallback: str, baudrate: int | None, timeout: float,
               retries: int, spec: str | None = None, on_close=None) -> Device:
    from .link.driver import LinkBackend
    from .link.transport import SerialTransport

    transport = SerialTransport(url, baudrate=baudrate or _default_baud())
    try:
        backend = LinkBackend(transport, timeout=timeout, retries=retries, on_close=on_close)
    except BaseException:
        transport.close()
        if on_close is not None:
            on_close()
        raise
    return Device(spec or url, backend, fallback=fallback)


def _open_sim(spec: str, board: str, *, fallback: str, timeout: float, retries: int) -> Device:
    from .gateware import device_design

    vboard = device_design(board).virtual_board().start()
    device = _open_link(vboard.url, fallback=fallback, baudrate=None, timeout=timeout,
                        retries=retries, spec=spec, on_close=vboard.stop)
    device.virtual_board = vboard
    return device


def _open_auto(*, fallback: str, baudrate: int | None, timeout: float) -> Device:
    """The first USB serial port that answers with an offload manifest; else the CPU."""
    from serial.tools import list_ports

    for port in list_ports.comports():
        if port.vid is None:
            continue
        try:
            return _open_link(port.device, fallback=fallback, baudrate=baudrate,
                              timeout=min(timeout, 0.2), retries=1)
        except DeviceError as exc:
            log.info("auto: %s is not an offload device: %s", port.device, exc)
    log.warning("auto: no offload board found on a serial port; calls run on the CPU")
    return Device("cpu", None, fallback=fallback)
