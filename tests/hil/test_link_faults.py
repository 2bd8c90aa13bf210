"""Never a wrong answer, on the virtual board: every link fault a user can meet, made by a TCP
proxy between the host and the board (or by the board itself going away), while calls run.

Each test asserts that every call returned the CPU path's result or raised an OffloadError,
counts both, and checks that the device is used in gateware again once the fault is over.
"""

from __future__ import annotations

import random
import time

import google_crc32c
import pytest

import offload
from offload import OffloadError

from .conftest import board_name
from .proxy import FaultProxy

# A lost frame is sent again after this. The virtual board answers a window of frames in a few
# milliseconds; an answer later than this is not lost, only sent for again (and replayed).
TIMEOUT = 0.03
# Generous: how long a test waits for the device to be used in gateware again. A deadline to
# give up by, not a speed asserted.
RECOVERY_DEADLINE = 60.0


@pytest.fixture
def vboard(pytestconfig, is_virtual):
    if not is_virtual:
        pytest.skip("the link fault tests need a virtual board (run with --device sim)")
    from offload.gateware import device_design

    board = device_design(board_name(pytestconfig)).virtual_board().start()
    yield board
    board.stop()


@pytest.fixture
def proxy(vboard):
    with FaultProxy(vboard.port, seed=1) as fault_proxy:
        yield fault_proxy


def call_and_check(device, message: bytes, tally: dict[str, int]) -> bool:
    """One call: True if it returned (the right answer), False if it raised an OffloadError."""
    try:
        result = device.crc32c(message)
    except OffloadError:
        tally["errors"] = tally.get("errors", 0) + 1
        return False
    assert result == google_crc32c.value(message), "a call returned a wrong answer"
    tally["correct"] = tally.get("correct", 0) + 1
    return True


def runs_in_gateware_again(device, tally) -> None:
    """Calls reach the gateware again (polled, within a generous deadline)."""
    before = device.stats()["kernels"]["crc32c"]["gateware"]
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while device.stats()["kernels"]["crc32c"]["gateware"] == before:
        assert time.monotonic() < deadline, f"never back in gateware: {device.stats()}"
        call_and_check(device, b"are you back?", tally)
        time.sleep(0.05)


def finish(device, tally) -> None:
    stats = device.stats()
    tally["in gateware"] = stats["kernels"]["crc32c"]["gateware"]
    tally["fallbacks"] = stats["fallbacks"]
    for key in ("resyncs", "reconnects", "failed_exchanges", "retries"):
        tally[key] = stats["link"].get(key, 0)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_black_hole(proxy, direction, fault_tally):
    """Everything one way is lost for longer than the retry budget, in the middle of calls."""
    rng = random.Random(3)
    with offload.open(proxy.url, fallback="never", timeout=TIMEOUT, retries=3) as device:
        for i in range(120):
            if i == 20:
                proxy.black_hole(direction, 1.0)
            call_and_check(device, rng.randbytes(rng.randrange(0, 4000)), fault_tally)
        runs_in_gateware_again(device, fault_tally)
        finish(device, fault_tally)
    assert fault_tally["errors"] >= 1, "the black hole never showed"
    assert fault_tally["resyncs"] >= 2  # the opening's and at least one after the hole


def test_cut_at_random_points_of_multi_frame_calls(proxy, fault_tally):
    """The connection is cut at a random byte of a call of several frames, again and again."""
    rng = random.Random(4)
    with offload.open(proxy.url, fallback="never", timeout=TIMEOUT, retries=3) as device:
        size = device.backend.manifest.max_payload
        for _ in range(40):
            message = rng.randbytes(rng.randrange(2 * size, 8 * size))
            if rng.random() < 0.5:
                direction = rng.choice(["up", "down"])
                limit = len(message) if direction == "up" else 40
                proxy.cut_after(rng.randrange(1, limit), direction)
            call_and_check(device, message, fault_tally)
        runs_in_gateware_again(device, fault_tally)
        finish(device, fault_tally)
    assert proxy.counts["cuts"] >= 5
    assert fault_tally["reconnects"] >= 5


@pytest.mark.parametrize("policy", ["never", "auto"])
def test_bit_flips_drops_and_duplicates(proxy, policy, fault_tally):
    """Each byte, both ways, is damaged with a probability of 1e-3: a bit flipped, the byte
    dropped or the byte sent twice, each a third of that."""
    rng = random.Random(5)
    rate = 1e-3 / 3
    proxy.set_faults(rate_flip=rate, rate_drop=rate, rate_dup=rate, direction="both")
    with offload.open(proxy.url, fallback=policy, timeout=TIMEOUT, retries=8) as device:
        for _ in range(200):
            call_and_check(device, rng.randbytes(rng.randrange(0, 2500)), fault_tally)
        proxy.set_faults(rate_flip=0, rate_drop=0, rate_dup=0, direction="both")
        runs_in_gateware_again(device, fault_tally)
        finish(device, fault_tally)
    for kind in ("flipped", "dropped", "duplicated"):
        fault_tally[kind] = proxy.counts[kind]
        assert proxy.counts[kind] > 0
    if policy == "auto":
        assert fault_tally.get("errors", 0) == 0  # every failed call fell back to the CPU


def test_board_restart_on_the_same_port(vboard, fault_tally):
    """The board goes away and a new one serves the same port: the same Device is used
    again, in gateware, and says it reconnected."""
    from offload.gateware import device_design
    from sim.virtual_board import VirtualBoard

    with offload.open(vboard.url, fallback="auto", timeout=TIMEOUT, retries=2) as device:
        assert call_and_check(device, b"before", fault_tally)
        port = vboard.port
        vboard.kill()
        for i in range(20):  # no board: these fall back to the CPU
            call_and_check(device, bytes([i]) * 100, fault_tally)
        design = device_design(device.backend.manifest.board)
        again: VirtualBoard = design.virtual_board(port=port).start()
        try:
            runs_in_gateware_again(device, fault_tally)
            finish(device, fault_tally)
        finally:
            again.stop()
    assert fault_tally["reconnects"] >= 1
    assert fault_tally["fallbacks"] >= 1
    assert fault_tally["in gateware"] >= 2  # before the restart, and after it
