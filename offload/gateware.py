"""A device's gateware, from the registry: which kernels, their ids, and the manifest.

Real boards (``offload build``) and virtual boards (``offload.open("sim")``, ``offload serve``)
are both made here, so the two are the same design but for the link's physical layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from hdl.link import protocol as p

from . import kernels as registry
from .errors import OffloadError

__all__ = ["DeviceDesign", "device_design"]

# Bytes per cycle a kernel gets on each board when none is asked for: the iCE40 UP5K is small
# and slow, so one byte per cycle (the link delivers one byte a cycle anyway); the ECP5-85F has
# room and speed for four.
BOARD_WIDTH = {"icebreaker": 1, "ulx3s-85f": 4}


def board_width(board: str, spec: registry.KernelSpec, width: int | None = None) -> int:
    """The beat width to build ``spec`` at for ``board``, checked against what it supports."""
    if width is None:
        width = BOARD_WIDTH.get(board, spec.default_width)
        width = max(w for w in spec.widths if w <= width)
    if width not in spec.widths:
        raise OffloadError(
            f"{spec.name} supports widths {', '.join(map(str, spec.widths))} bytes, not {width}"
        )
    return width


@dataclass(frozen=True)
class DeviceDesign:
    """Everything that decides a device's gateware: board, kernels and their widths."""

    board: str
    kernels: tuple[tuple[registry.KernelSpec, int], ...]
    max_payload: int = p.MAX_PAYLOAD

    @property
    def name(self) -> str:
        parts = [f"{spec.name}_w{width}" for spec, width in self.kernels] or ["empty"]
        return "link_" + "_".join(parts)

    def manifest(self) -> bytes:
        """The manifest the system kernel answers with (compact JSON, see protocol.py)."""
        from boards import get_board

        board = get_board(self.board)
        kernels = [{"name": spec.name, "id": spec.id, "version": spec.version,
                    "params": {"width": width}} for spec, width in self.kernels]
        body = {"link": p.LINK_VERSION, "board": board.name, "clock_hz": board.clock_hz,
                "max_payload": self.max_payload, "max_response": p.MAX_RESPONSE,
                "window": p.REPLAY_WINDOW, "link_baud": board.link_baud, "kernels": kernels}
        # The build id names this design: the same kernels, widths and board give the same id.
        build = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
        body["build"] = build
        return json.dumps(body, separators=(",", ":")).encode()

    def module_name(self, mode: str = "board") -> str:
        """The top's module name in ``mode``; also names its builds in the cache."""
        name = f"{self.board.replace('-', '_')}_{self.name}"
        return name if mode == "board" else f"{name}_{mode}"

    def virtual_board(self, port: int = 0):
        """A (not yet started) :class:`sim.virtual_board.VirtualBoard` of this design.

        A host that connects while another holds it is answered with one STATUS_BUSY frame
        (see ``hdl/link/protocol.py``) and its connection closed.
        """
        from sim.virtual_board import VirtualBoard

        from .link.codec import Frame, encode_frame

        busy = encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.STATUS_BUSY, 0,
                                  b"another host holds this virtual board",
                                  p.FLAG_RESPONSE))
        return VirtualBoard(self.top("bytes"), self.module_name("bytes"), port=port,
                            busy_reply=busy)

    def top(self, mode: str = "board"):
        """The :class:`boards.link_top.LinkTop` of this design in ``mode``."""
        from boards import get_board
        from boards.link_top import LinkTop

        board = get_board(self.board)
        return LinkTop([(spec.id, spec.gateware(width)) for spec, width in self.kernels],
                       self.manifest(), clock_hz=board.clock_hz, baud=board.link_baud,
                       mode=mode, uart=board.uart, max_payload=self.max_payload)


def device_design(board: str = "icebreaker", kernel_names: Sequence[str] | None = None,
                  width: int | None = None) -> DeviceDesign:
    """The design of ``board`` with ``kernel_names`` (default: every kernel)."""
    from boards import get_board

    get_board(board)  # a clear error for an unknown board, before anything else
    specs = [registry.get(n) for n in kernel_names] if kernel_names else list(registry.KERNELS)
    return DeviceDesign(board, tuple((spec, board_width(board, spec, width)) for spec in specs))
