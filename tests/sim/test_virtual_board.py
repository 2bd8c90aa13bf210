"""The virtual board's harness: one host at a time, the others told so at once, bounded memory.

These talk to the harness with plain sockets and system-kernel frames, as a host driver would,
so that what is tested is the harness (sim/harness/board_harness.cpp), not the driver.
"""

from __future__ import annotations

import socket
import time

import pytest

from hdl.link import protocol as p
from offload.link.codec import Frame, FrameError, FrameSplitter, decode_frame, encode_frame
from sim.toolchain import ToolchainError

# Generous: a loaded machine may run the board slowly. Nothing here asserts on time.
DEADLINE = 30.0
# A request unanswered for this long is sent again (the board drops a frame it cannot read,
# such as one appended to a frame left half-sent by a client that went away).
RETRY = 1.0


@pytest.fixture(scope="module")
def board():
    from offload.gateware import device_design

    try:
        vb = device_design("icebreaker").virtual_board()
    except ToolchainError as exc:
        pytest.skip(f"the virtual board needs Verilator: {exc}")
    with vb:
        yield vb


def connect(board) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", board.port), timeout=DEADLINE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def manifest(sock: socket.socket, nonce: int) -> Frame:
    """The board's answer to a manifest request sent on ``sock``, resent until it comes."""
    splitter = FrameSplitter()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        sock.sendall(encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.OP_MANIFEST, nonce)))
        resend = time.monotonic() + RETRY
        while time.monotonic() < min(resend, deadline):
            sock.settimeout(max(0.01, resend - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                raise AssertionError("the board closed the connection")
            for encoded in splitter.feed(data):
                try:
                    frame = decode_frame(encoded)
                except FrameError:
                    continue  # the tail of an answer to a client that left
                if frame.kernel == p.SYSTEM_KERNEL_ID and frame.seq == nonce:
                    return frame
    raise AssertionError(f"no answer to a manifest request in {DEADLINE} s")


def read_to_end(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the other end closes it."""
    data = bytearray()
    sock.settimeout(DEADLINE)
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def assert_served(frame: Frame) -> None:
    assert frame.op == p.STATUS_OK, frame.status_name
    assert frame.flags & p.FLAG_RESPONSE
    assert b'"link"' in frame.payload


def test_second_host_is_told_busy_at_once(board):
    with connect(board) as first:
        assert_served(manifest(first, 1))
        with connect(board) as second:
            reply = read_to_end(second)
        assert reply == board.busy_reply
        busy = decode_frame(reply[:-1])
        assert (busy.kernel, busy.op, busy.seq) == (p.SYSTEM_KERNEL_ID, p.STATUS_BUSY, 0)
        assert busy.flags & p.FLAG_RESPONSE
        assert "another host" in busy.payload.decode()
        # The host that holds the board is not disturbed.
        assert_served(manifest(first, 2))


def test_host_that_reconnects_at_once_is_served(board):
    for attempt in range(20):
        sock = connect(board)
        if attempt % 2:
            assert_served(manifest(sock, attempt))
        sock.close()
        with connect(board) as again:
            assert_served(manifest(again, 1000 + attempt))


def test_host_that_never_reads_is_pushed_back(board):
    request = encode_frame(Frame(p.SYSTEM_KERNEL_ID, p.OP_MANIFEST, 7))
    total = 4 << 20
    with connect(board) as writer:
        answer = manifest(writer, 7)
        assert_served(answer)
        answer_size = len(encode_frame(answer))
        before = resident_kib(board.pid)

        # A small send buffer, so that the client feels the push back soon.
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        block = request * 4096
        sent = 0
        # No progress for a while: the board has stopped taking. A pause before enough has gone
        # to tell (a loaded machine) is waited out, up to a deadline to give up by.
        writer.settimeout(3.0)
        deadline = time.monotonic() + 60
        enough = (3 << 20) // answer_size * len(request)  # 3 MiB of answers, unbounded
        while sent < total:
            try:
                sent += writer.send(block[: total - sent])
            except TimeoutError:
                if sent >= enough or time.monotonic() > deadline:
                    break
        assert sent < total, "the board took 4 MiB of requests from a host that reads nothing"
        after = resident_kib(board.pid)

        # A board that kept every answer would hold this much once it had run what was sent.
        unbounded_kib = sent // len(request) * answer_size // 1024
        assert unbounded_kib > 2048, unbounded_kib
        growth = after - before
        assert growth < min(2048, unbounded_kib // 4), (growth, unbounded_kib)

    # The writer has left (its unread answers reset the connection); the next host is served.
    with connect(board) as sock:
        assert_served(manifest(sock, 8))


def test_host_behind_a_cut_proxy_is_served_again(board):
    from tests.hil.proxy import FaultProxy

    with FaultProxy(board.port) as proxy:
        for attempt in range(5):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=DEADLINE) as sock:
                assert_served(manifest(sock, 2000 + attempt))
                proxy.cut()
        assert proxy.counts["cuts"] == 5
