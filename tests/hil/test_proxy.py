"""The fault-injecting proxy, against a local echo server (no board needed)."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from .proxy import FaultProxy

DEADLINE = 20.0  # generous; nothing here asserts on time


class EchoServer:
    """Sends back whatever it receives, and records what each connection brought, and when
    each opens and closes."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.events: list[tuple[str, int]] = []
        self.received: dict[int, bytearray] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        number = 0
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            number += 1
            self.events.append(("open", number))
            self.received[number] = bytearray()
            threading.Thread(target=self._echo, args=(conn, number), daemon=True).start()

    def _echo(self, conn, number):
        conn.settimeout(DEADLINE)
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received[number] += data
                    conn.sendall(data)
            except OSError:
                pass
        self.events.append(("close", number))

    def close(self):
        self._stop.set()
        self.listener.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo):
    with FaultProxy(echo.port, seed=1) as proxy:
        yield proxy


def connect(proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=DEADLINE)


def receive_until(sock, done, received: bytearray) -> None:
    """Receive into ``received`` until ``done()``; fail if that takes past the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, f"stuck with {len(received)} bytes received"
        sock.settimeout(0.1)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        assert data, "the connection closed"
        received += data


def send_in_background(sock, data: bytes) -> threading.Thread:
    # In a thread, so that the echo coming back cannot block the sender (TCP buffers are finite).
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


def payload(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def test_bytes_pass_unchanged_without_faults(proxy):
    data = payload(100 * 1024)
    with connect(proxy) as sock:
        sender = send_in_background(sock, data)
        received = bytearray()
        receive_until(sock, lambda: len(received) >= len(data), received)
        sender.join(DEADLINE)
    assert received == data
    counts = proxy.counts
    assert counts["bytes_up"] == counts["bytes_down"] == len(data)
    assert counts["connections"] == 1
    assert proxy.url == f"socket://127.0.0.1:{proxy.port}"


def test_drops_lose_exactly_the_counted_bytes(proxy):
    proxy.set_faults(rate_drop=1e-2, direction="up")
    data = payload(100 * 1024)
    with connect(proxy) as sock:
        sender = send_in_background(sock, data)
        received = bytearray()

        def done():
            counts = proxy.counts
            return (counts["bytes_up"] == len(data)
                    and len(received) >= len(data) - counts["dropped"])

        receive_until(sock, done, received)
        sender.join(DEADLINE)
    dropped = proxy.counts["dropped"]
    assert dropped > 0
    assert len(received) == len(data) - dropped
    rest = iter(data)
    assert all(byte in rest for byte in received)  # what arrived is what was sent, in order


def test_flips_and_duplicates_are_counted(proxy):
    data = payload(50 * 1024)
    proxy.set_faults(rate_flip=1e-2, direction="both")
    with connect(proxy) as sock:
        sender = send_in_background(sock, data)
        received = bytearray()
        receive_until(sock, lambda: len(received) >= len(data), received)
        sender.join(DEADLINE)
        # A flip is one bit of one byte, and a byte is flipped at most once each way.
        differing = sum(a != b for a, b in zip(data, received, strict=True))
        assert 0 < differing <= proxy.counts["flipped"]

        proxy.set_faults(rate_dup=1e-2, direction="down")
        sender = send_in_background(sock, data)
        received = bytearray()
        receive_until(sock, lambda: len(received) >= len(data) + proxy.counts["duplicated"]
                      and proxy.counts["bytes_down"] == 2 * len(data), received)
        sender.join(DEADLINE)
    assert proxy.counts["duplicated"] > 0
    assert len(received) == len(data) + proxy.counts["duplicated"]


def test_black_hole_discards(proxy):
    with connect(proxy) as sock:
        proxy.black_hole("up", 60.0)
        sock.sendall(b"lost" * 250)
        deadline = time.monotonic() + DEADLINE
        while proxy.counts["black_holed"] < 1000:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proxy.black_hole("up", 0)  # over early
        sock.sendall(b"kept")
        received = bytearray()
        receive_until(sock, lambda: len(received) >= 4, received)
    assert received == b"kept"  # nothing of the 1000 black-holed bytes ever came back
    assert proxy.counts["black_holed"] == 1000


def test_cut_closes_the_connection_and_a_new_one_is_served(proxy, echo):
    with connect(proxy) as sock:
        sock.sendall(b"ping")
        received = bytearray()
        receive_until(sock, lambda: len(received) >= 4, received)
        proxy.cut()
        sock.settimeout(DEADLINE)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    # The cut reached the board too. (Waited for, not compared by position with the next open:
    # the echo server notices a close only when its connection's recv returns.)
    deadline = time.monotonic() + DEADLINE
    while ("close", 1) not in echo.events:
        assert time.monotonic() < deadline, echo.events
        time.sleep(0.01)
    with connect(proxy) as sock:
        sock.sendall(b"pong")
        received = bytearray()
        receive_until(sock, lambda: len(received) >= 4, received)
        assert received == b"pong"
    counts = proxy.counts
    assert (counts["cuts"], counts["connections"]) == (1, 2)


def test_cut_after_passes_exactly_n_bytes(proxy, echo):
    with connect(proxy) as sock:
        proxy.cut_after(300, "up")
        sock.sendall(payload(1000))
        sock.settimeout(DEADLINE)
        try:
            while sock.recv(65536):  # what echoes back before the cut, then the end
                pass
        except ConnectionResetError:
            pass
    deadline = time.monotonic() + DEADLINE
    while ("close", 1) not in echo.events:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert echo.received[1] == payload(1000)[:300]
    assert proxy.counts["cuts"] == 1


def test_a_new_connection_ends_the_old_one(proxy, echo):
    with connect(proxy) as first:
        first.sendall(b"one")
        received = bytearray()
        receive_until(first, lambda: len(received) >= 3, received)
        with connect(proxy) as second:
            second.sendall(b"two")
            received = bytearray()
            receive_until(second, lambda: len(received) >= 3, received)
            assert received == b"two"
            # The first client's connection was ended, and so was its upstream one. (In which
            # order the echo server sees the old close and the new open is up to its threads:
            # the proxy closes first, but a close is only noticed when a recv returns.)
            first.settimeout(DEADLINE)
            assert first.recv(1) == b""
            deadline = time.monotonic() + DEADLINE
            while ("close", 1) not in echo.events:
                assert time.monotonic() < deadline, echo.events
                time.sleep(0.01)
            assert ("close", 2) not in echo.events
