"""The kernel registry: every kernel, listed once.

The mux, the device manifest, the CLI's kernel list, the bench and the ``Device`` methods are
all derived from :data:`KERNELS`. Adding a kernel is its three files and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import KernelNotFound
from . import crc32c

__all__ = ["KernelSpec", "KERNELS", "get", "by_id"]


def _crc32c_gateware(width: int = 4):
    from hdl.kernels.crc32c import Crc32cKernel

    return Crc32cKernel(width)


@dataclass(frozen=True)
class KernelSpec:
    """One kernel: what it is called, how the link names it, and its three implementations.

    Attributes
    ----------
    name : str
        The Python name (``Device.<name>``) and the CLI name.
    id : int
        The kernel id on the link (1-255; 0 is the system kernel).
    version : int
        Bumped whenever the gateware's behaviour or its codec changes.
    widths : tuple of int
        Beat widths (bytes per cycle) the gateware supports.
    gateware : callable
        ``gateware(width) -> wiring.Component`` with ``i_stream``/``o_stream``.
    cpu : callable
        The reference behaviour, also the fallback.
    encode, decode : callable
        A call's arguments to request bytes; response bytes to the call's result.
    summary : str
        One line for the kernel list.
    stateful : bool
        Whether a call changes state that lives where the kernel runs. A stateful call is
        never run twice: not retried after a failed exchange (whether it ran is unknown).
    """

    name: str
    id: int
    version: int
    widths: tuple[int, ...]
    gateware: Callable[[int], Any]
    cpu: Callable[..., Any]
    encode: Callable[..., bytes]
    decode: Callable[[bytes], Any]
    summary: str
    default_width: int = field(default=4)
    stateful: bool = False


KERNELS: tuple[KernelSpec, ...] = (
    KernelSpec("crc32c", 1, 1, (1, 2, 4, 8), _crc32c_gateware, crc32c.cpu, crc32c.encode,
               crc32c.decode, "CRC-32C (Castagnoli) of a byte string"),
)


def get(name: str) -> KernelSpec:
    """The kernel called ``name``; :class:`KernelNotFound` listing the known ones otherwise."""
    for spec in KERNELS:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in KERNELS)
    raise KernelNotFound(f"no kernel named {name!r}; known kernels: {known}")


def by_id(kernel_id: int) -> KernelSpec:
    """The kernel whose link id is ``kernel_id``."""
    for spec in KERNELS:
        if spec.id == kernel_id:
            return spec
    raise KernelNotFound(f"no kernel has id {kernel_id}")


def _check_registry() -> None:
    # Ids and names are the link's and the API's keys: a clash would be a silent misroute.
    ids = [spec.id for spec in KERNELS]
    names = [spec.name for spec in KERNELS]
    assert len(set(ids)) == len(ids), f"duplicate kernel ids in the registry: {ids}"
    assert len(set(names)) == len(names), f"duplicate kernel names in the registry: {names}"
    assert all(1 <= i <= 255 for i in ids), "kernel ids are 1..255 (0 is the system kernel)"


_check_registry()
