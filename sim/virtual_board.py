"""The virtual board: a board's own top-level gateware in Verilator, its link on a TCP port.

The host reaches it at ``socket://127.0.0.1:PORT`` with the same transport and driver as a real
board's UART. The top must expose the link as two byte streams, ``i_bytes`` (host to gateware)
and ``o_bytes`` (gateware to host); the board tops in ``boards/`` do in their byte-link mode.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from amaranth.lib import wiring

from .build import SimulationError, build_model
from .harness import HARNESS_FLAGS, harness_sources, verilator_name
from .verilog import module_ports, remove_self_loops, to_verilog

__all__ = ["VirtualBoard", "BoardRun"]

_SOURCE = "board_harness.cpp"
_PORTS = {
    "I_VALID": "i_bytes__valid", "I_READY": "i_bytes__ready", "I_PAYLOAD": "i_bytes__payload",
    "O_VALID": "o_bytes__valid", "O_READY": "o_bytes__ready", "O_PAYLOAD": "o_bytes__payload",
}

# Seconds to wait for the harness to say it listens; it starts in milliseconds once built.
_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class BoardRun:
    """What a virtual board reports when it stops: cycles run and the wall time it ran for."""

    cycles: int
    seconds: float

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.seconds if self.seconds > 0 else 0.0


def build_virtual_board(top: wiring.Component, name: str, *, ports: dict[str, str] = _PORTS,
                        harness: str = _SOURCE, kind: str = "board",
                        needs: str = "byte-stream link ports i_bytes and o_bytes") -> Path:
    """Build (or take from the cache) the virtual-board executable of ``top``: its Verilog
    with the C++ ``harness`` of ``sim/harness/``, which names the top's ``ports`` by the macros
    of ``board_ports.h`` (macro to port name). ``needs`` says what a top lacking them lacks."""
    # Without the constant-mask registers' self-loops, which Verilator would copy every cycle.
    verilog, _ = remove_self_loops(to_verilog(top, name))
    missing = {"clk", "rst", *ports.values()} - set(module_ports(verilog, name))
    if missing:
        raise TypeError(
            f"{name!r} lacks the port(s) {sorted(missing)}: a virtual board needs a top with "
            f"{needs}"
        )
    header = "#pragma once\n" + "".join(
        f"#define {macro} {verilator_name(port)}\n" for macro, port in ports.items())
    folder = build_model(verilog, name, kind=kind, flags=HARNESS_FLAGS,
                         extra_sources=[*harness_sources(harness, "clocked_board.h"),
                                        ("board_ports.h", header)])
    return folder / name


class VirtualBoard:
    """A running virtual board. Start it with :meth:`start`, or use it as a context manager.

    Parameters
    ----------
    top : wiring.Component
        The board's top-level gateware in byte-link mode.
    name : str
        Its module name (also names the build in the cache).
    port : int
        TCP port on 127.0.0.1 to serve on; 0 picks a free one.
    busy_reply : bytes
        What a host that connects while another holds the board is sent before its connection
        is closed (the board's own protocol decides the bytes); empty: it is only closed.
    """

    def __init__(self, top: wiring.Component, name: str, *, port: int = 0,
                 busy_reply: bytes = b""):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 to 65535, not {port!r}")
        if not isinstance(busy_reply, (bytes, bytearray)):
            raise TypeError(f"busy_reply must be bytes, not {busy_reply!r}")
        self.busy_reply = bytes(busy_reply)
        self.binary = self._build(top, name)
        self.name = name
        self.requested_port = port
        self.port: int | None = None
        self._process: subprocess.Popen | None = None
        self.last_run: BoardRun | None = None

    #: The scheme of :attr:`url`.
    scheme = "socket"

    @staticmethod
    def _build(top: wiring.Component, name: str) -> Path:
        return build_virtual_board(top, name)

    def _arguments(self) -> list[str]:
        """The harness's command-line arguments after the port."""
        return [self.busy_reply.hex()]

    @property
    def url(self) -> str:
        """The host's URL of the link, ``socket://127.0.0.1:PORT`` (pyserial's)."""
        if self.port is None:
            raise SimulationError(f"virtual board {self.name!r} is not running")
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The harness's process id while it runs (tests read its memory use from /proc)."""
        return self._process.pid if self.running else None

    def start(self) -> VirtualBoard:
        if self.running:
            return self
        process = subprocess.Popen(
            [str(self.binary), str(self.requested_port), *self._arguments()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT)
        if not line or not line[0].startswith("listening "):
            process.kill()
            _, err = process.communicate(timeout=5)
            err = err.strip()
            if "cannot listen" in err and "in use" in err:  # the harness's bind() said EADDRINUSE
                raise SimulationError(
                    f"virtual board {self.name!r} cannot serve on port {self.requested_port}: "
                    "another program is using it; choose another port, or 0 for any free one")
            raise SimulationError(
                f"virtual board {self.name!r} did not start: {err or 'no message'}")
        self.port = int(line[0].split()[1])
        self._process = process
        return self

    def stop(self, timeout: float = 10.0) -> BoardRun | None:
        """Stop the board (closing its stdin) and return what it ran."""
        process, self._process = self._process, None
        if process is None:
            return self.last_run
        try:
            out, _ = process.communicate(input="", timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        self._read_report(out)
        self.port = None
        return self.last_run

    def _read_report(self, out: str) -> None:
        for text in out.splitlines():
            words = text.split()
            if len(words) == 4 and words[0] == "cycles":
                self.last_run = BoardRun(int(words[1]), float(words[3]))

    def kill(self) -> None:
        """End the board at once, as a pulled cable or a crash would (for fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __del__(self):
        if getattr(self, "_process", None) is not None:
            self.kill()
