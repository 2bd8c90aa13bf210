"""A TCP proxy that damages a byte link on purpose, for the "never a wrong answer" fault tests.

It sits between a host and a virtual board (or anything else on a TCP port on 127.0.0.1)::

    host ──► FaultProxy.url ──► upstream port
         "up": host to board; "down": board to host

and, per direction, flips, drops or duplicates single bytes at random (seeded), swallows
everything for a while (a black hole), or cuts the connection now or after so many more bytes
(at a random point of a multi-frame call). Unlike ``faults.FaultyTransport``, which damages
whole frames inside the host, it works on the raw byte stream under the host's transport, as a
noisy or broken line would.

One connection is proxied at a time. A new downstream connection ends the current one, and the
old upstream socket is closed before the new one is opened, so that the board sees its old host
leave before the new one arrives, as it would after a real reconnect.
"""

from __future__ import annotations

import random
import socket
import threading
import time

__all__ = ["FaultProxy"]

DIRECTIONS = ("up", "down")

# How often blocked socket calls look up to see whether they should stop.
_TICK = 0.2
_CHUNK = 65536


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
    return (direction,)


class _Connection:
    """One proxied pair of sockets, downstream (the host's) and upstream (the board's)."""

    def __init__(self, down: socket.socket, up: socket.socket):
        self.down, self.up = down, up
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def close(self, first=None) -> bool:
        """Close both sockets (once); True if this call closed them.

        ``first`` runs before the sockets close, and only if this call closes them: a count
        kept there is in place before either end can see the connection end.
        """
        with self._lock:
            if self.closed.is_set():
                return False
            self.closed.set()
        if first is not None:
            first()
        for sock in (self.up, self.down):  # upstream first: the board sees the host leave
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it
            except OSError:
                pass
            sock.close()
        return True


class FaultProxy:
    """A fault-injecting TCP proxy from ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``.

    Parameters
    ----------
    upstream_port : int
        The port on 127.0.0.1 to connect each proxied connection to (the board's).
    port : int
        The port to listen on; 0 picks a free one (see :attr:`port`, :attr:`url`).
    seed : int
        Seed of the random faults, so that a failing run can be repeated.

    Members
    -------
    counts : dict of str to int
        What the proxy did so far: ``flipped``, ``dropped``, ``duplicated`` and
        ``black_holed`` bytes, ``cuts``, ``connections``, and ``bytes_up`` / ``bytes_down``
        received from each side before any fault. A copy, taken under the proxy's lock.
    """

    def __init__(self, upstream_port: int, *, port: int = 0, seed: int = 0):
        self.upstream = ("127.0.0.1", upstream_port)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rates = {d: (0.0, 0.0, 0.0) for d in DIRECTIONS}  # flip, drop, duplicate
        self._hole_until = {d: 0.0 for d in DIRECTIONS}
        self._cut_after: dict[str, int | None] = {d: None for d in DIRECTIONS}
        self._counts = dict.fromkeys(
            ("flipped", "dropped", "duplicated", "black_holed", "cuts", "connections",
             "bytes_up", "bytes_down"), 0)
        self._connection: _Connection | None = None
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="FaultProxy.accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        """The pyserial URL a host opens to go through the proxy."""
        return f"socket://127.0.0.1:{self.port}"

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    # -- faults ----------------------------------------------------------------------------

    def set_faults(self, rate_flip: float = 0.0, rate_drop: float = 0.0, rate_dup: float = 0.0,
                   direction: str = "both") -> None:
        """Per-byte fault rates from now on in ``direction`` ("up", "down" or "both").

        Each byte gets at most one fault: it is dropped with probability ``rate_drop``, else
        has one random bit flipped with ``rate_flip``, else is sent twice with ``rate_dup``.
        All zero (the default) turns faults off.
        """
        rates = (rate_flip, rate_drop, rate_dup)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError(f"fault rates must be 0 to 1 and sum to at most 1, not {rates}")
        with self._lock:
            for d in _directions(direction):
                self._rates[d] = rates

    def black_hole(self, direction: str, seconds: float) -> None:
        """Discard every byte in ``direction`` for ``seconds`` from now (0 ends a black hole)."""
        until = time.monotonic() + seconds
        with self._lock:
            for d in _directions(direction):
                self._hole_until[d] = until

    def cut(self) -> None:
        """Close both sockets of the current connection now (nothing happens without one)."""
        with self._lock:
            connection = self._connection
        if connection is not None:
            connection.close(first=self._count_cut)

    def _count_cut(self) -> None:
        with self._lock:
            self._counts["cuts"] += 1

    def cut_after(self, n_bytes: int, direction: str) -> None:
        """Cut the connection once ``n_bytes`` more bytes have been passed on in ``direction``.

        The bytes counted are those sent on, after faults; the cut happens on whichever
        connection carries them.
        """
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be at least 0, not {n_bytes!r}")
        with self._lock:
            for d in _directions(direction):
                self._cut_after[d] = n_bytes
        if n_bytes == 0:
            self.cut()

    def _damage(self, direction: str, data: bytes) -> tuple[bytes, bool]:
        """The bytes to pass on for ``data``, and whether to cut after passing them."""
        with self._lock:
            self._counts["bytes_" + direction] += len(data)
            if time.monotonic() < self._hole_until[direction]:
                self._counts["black_holed"] += len(data)
                return b"", False
            flip, drop, dup = self._rates[direction]
            if flip or drop or dup:
                out = bytearray()
                rng = self._rng
                for byte in data:
                    r = rng.random()
                    if r < drop:
                        self._counts["dropped"] += 1
                    elif r < drop + flip:
                        self._counts["flipped"] += 1
                        out.append(byte ^ (1 << rng.randrange(8)))
                    elif r < drop + flip + dup:
                        self._counts["duplicated"] += 1
                        out += bytes((byte, byte))
                    else:
                        out.append(byte)
                data = bytes(out)
            left = self._cut_after[direction]
            if left is not None:
                if len(data) >= left:
                    self._cut_after[direction] = None
                    return data[:left], True
                self._cut_after[direction] = left - len(data)
            return data, False

    # -- plumbing --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            self._end_connection()  # the board sees the old host leave before the new one
            try:
                up = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                down.close()
                continue
            connection = _Connection(down, up)
            for sock in (down, up):
                sock.settimeout(_TICK)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for direction, src, dst in (("up", down, up), ("down", up, down)):
                connection.threads.append(threading.Thread(
                    target=self._pump, args=(connection, direction, src, dst),
                    name=f"FaultProxy.{direction}", daemon=True))
            with self._lock:
                self._connection = connection
                self._counts["connections"] += 1
            for thread in connection.threads:
                thread.start()

    def _end_connection(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            for thread in connection.threads:
                thread.join(5.0)

    def _pump(self, connection: _Connection, direction: str, src: socket.socket,
              dst: socket.socket) -> None:
        try:
            while not connection.closed.is_set():
                try:
                    data = src.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    break
                data, cut = self._damage(direction, data)
                while data and not connection.closed.is_set():
                    try:
                        data = data[dst.send(data):]
                    except TimeoutError:
                        continue  # the receiver is not reading; keep trying until closed
                if cut:
                    connection.close(first=self._count_cut)
        except OSError:
            pass  # a socket was reset or closed under us: the connection is over
        finally:
            connection.close()  # one side gone: the other is told, as a cable pulled would

    def close(self) -> None:
        """Stop accepting, end the current connection, and stop every thread."""
        self._stop.set()
        self._listener.close()
        self._acceptor.join(5.0)
        self._end_connection()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
