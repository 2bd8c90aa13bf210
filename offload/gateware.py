"""A device's gateware, from the registry: which kernels, their ids, and the manifest.

Real boards (``offload build``) and virtual boards (``offload.open("sim")``, ``offload serve``)
are both made here, so the two are the same design but for the link's physical layer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hdl.link import protocol as p

from . import kernels as registry
from .errors import OffloadError

__all__ = ["DeviceDesign", "device_design", "board_width", "kernel_label"]

def board_width(board: str, spec: registry.KernelSpec, width: int | None = None) -> int:
    """The beat width to build ``spec`` at for ``board``, checked against what it supports."""
    if width is None:
        return spec.resolve(board=board).get("width", spec.default_width)
    if width not in spec.widths:
        raise OffloadError(
            f"{spec.name} supports widths {', '.join(map(str, spec.widths))} bytes, not {width}"
        )
    return width


def kernel_label(spec: registry.KernelSpec, params: Mapping[str, int]) -> str:
    """A kernel with its parameters in a name (``crc32c_w4``), for modules and builds."""
    parts = [spec.name]
    for name, value in sorted(params.items()):
        if isinstance(value, str):
            # Text (a policy, numbers a queue, a schema's name): as an identifier, and short.
            text = re.sub(r"[^A-Za-z0-9]", "_", value)
            if len(text) > 24 or text != value and not re.fullmatch(r"[0-9,]+", value):
                text = hashlib.sha256(value.encode()).hexdigest()[:10]
            value = text
        parts.append(f"w{value}" if name == "width" else f"{name}{value}")
    return "_".join(parts)


#: The longest design name: the build folders are named after it, with a key and a suffix.
_MAX_NAME = 120


@dataclass(frozen=True)
class DeviceDesign:
    """Everything that decides a device's gateware: board, kernels and their parameters."""

    board: str
    kernels: tuple[tuple[registry.KernelSpec, tuple[tuple[str, int], ...]], ...]
    max_payload: int = p.MAX_PAYLOAD
    baud: int | None = None  # the link's rate; None: the board's
    max_response: int = p.MAX_RESPONSE
    #: An Ethernet board's address: MAC, IPv4 and UDP port (None: the board's defaults).
    address: tuple[int, int, int] | None = None

    @property
    def link(self) -> str:
        """The host link: ``"uart"``, or ``"udp"`` on an Ethernet board."""
        from boards import get_board

        return get_board(self.board).link

    @property
    def link_baud(self) -> int | None:
        """The UART's rate; None on an Ethernet board."""
        from boards import get_board

        board = get_board(self.board)
        if board.link != "uart":
            return None
        return board.link_baud if self.baud is None else self.baud

    @property
    def mac_ip_port(self) -> tuple[int, int, int]:
        """An Ethernet board's MAC address, IPv4 address and UDP port."""
        from boards import get_board

        board = get_board(self.board)
        return self.address or (board.mac, board.ip, board.udp_port)

    @property
    def clock_hz(self) -> int:
        """The clock the device runs at: the board's oscillator, or its PLL's clock for the
        link rate (``Board.device_hz``)."""
        from boards import get_board

        return get_board(self.board).device_hz(self.link_baud)

    @property
    def name(self) -> str:
        parts = [kernel_label(spec, dict(params)) for spec, params in self.kernels] or ["empty"]
        name = "link_" + "_".join(parts)
        if len(name) > _MAX_NAME:  # a file name for the builds: the start, and a hash of all
            name = f"{name[:_MAX_NAME - 13]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
        return name

    def manifest(self) -> bytes:
        """The manifest the system kernel answers with (compact JSON, see protocol.py)."""
        from boards import get_board

        board = get_board(self.board)
        kernels = [{"name": spec.name, "id": spec.id, "version": spec.version,
                    "params": dict(params)} for spec, params in self.kernels]
        body = {"link": p.LINK_VERSION, "board": board.name, "clock_hz": self.clock_hz,
                "max_payload": self.max_payload, "max_response": self.max_response,
                "window": p.REPLAY_WINDOW, "kernels": kernels}
        if board.link == "uart":
            body["link_baud"] = self.link_baud
        else:
            mac, ip, port = self.mac_ip_port
            body.update(mac=f"{mac:012x}", ip=str(ipaddress.IPv4Address(ip)), udp_port=port)
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

        if self.link == "udp":
            from sim.udp_board import UdpVirtualBoard

            mac, ip, udp_port = self.mac_ip_port
            return UdpVirtualBoard(self.top("gmii"), self.module_name("gmii"), mac=mac, ip=ip,
                                   udp_port=udp_port, port=port)

        busy = encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.STATUS_BUSY, 0,
                                  b"another host holds this virtual board",
                                  p.FLAG_RESPONSE))
        return VirtualBoard(self.top("bytes"), self.module_name("bytes"), port=port,
                            busy_reply=busy)

    def top(self, mode: str = "board"):
        """The :class:`boards.link_top.LinkTop` of this design in ``mode``; on an Ethernet
        board, its :class:`boards.eth_top.EthLinkTop`."""
        from boards import get_board
        from boards.link_top import LinkTop

        board = get_board(self.board)
        kernels = [(spec.id, spec.component(**dict(params))) for spec, params in self.kernels]
        if board.link == "udp":
            from boards.eth_top import EthLinkTop

            mac, ip, udp_port = self.mac_ip_port
            return EthLinkTop(kernels, self.manifest(), mac=mac, ip=ip, port=udp_port,
                              core_hz=self.clock_hz, mode=mode, resource=board.rgmii,
                              max_payload=self.max_payload, max_response=self.max_response)
        return LinkTop(kernels, self.manifest(), clock_hz=self.clock_hz, baud=self.link_baud,
                       mode=mode, uart=board.uart, max_payload=self.max_payload,
                       pll=self.clock_hz != board.clock_hz)


def device_design(board: str = "icebreaker", kernel_names: Sequence[str] | None = None,
                  width: int | None = None,
                  params: Mapping[str, Mapping[str, object]] | None = None,
                  baud: int | None = None,
                  address: tuple[int, int, int] | None = None) -> DeviceDesign:
    """The design of ``board`` with ``kernel_names`` (default: every kernel that is in a device
    by default), and every kernel named in ``params``, each at ``params[name]``, else the
    board's defaults, else its own; ``width``, if given, for every kernel that has a choice of
    widths; the link at ``baud`` (default: the board's rate), the device's clock chosen for it;
    on an Ethernet board, at ``address`` (MAC, IPv4, UDP port; default: the board's).
    """
    from boards import BoardError, get_board

    spec_board = get_board(board)  # a clear error for an unknown board, before anything else
    if baud is not None:
        spec_board.device_hz(baud)  # a BoardError for a rate the board cannot run
    params = dict(params or {})
    names = list(kernel_names or [spec.name for spec in registry.KERNELS if spec.default])
    names += [name for name in params if name not in names]
    specs = [registry.get(n) for n in names]
    unknown = set(params) - {spec.name for spec in specs}
    for name in unknown:
        registry.get(name)  # KernelNotFound for a name offload does not know
    chosen = []
    for spec in specs:
        asked = dict(params.get(spec.name, {}))
        if width is not None:
            asked = {**spec.width_params(board_width(board, spec, width)), **asked}
        resolved = spec.resolve(asked, board=board)
        chosen.append((spec, tuple(sorted(resolved.items()))))
    if spec_board.link == "udp":
        return DeviceDesign(board, tuple(chosen), max_payload=p.UDP_MAX_PAYLOAD,
                            max_response=p.UDP_MAX_RESPONSE, address=address)
    if address is not None:
        raise BoardError(f"{board}'s link is a UART: it has no MAC, IP address or UDP port")
    return DeviceDesign(board, tuple(chosen), baud=baud)
