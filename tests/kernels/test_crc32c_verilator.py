"""The CRC-32C kernel under Verilator: the cocotb testbench, and the fast stream harness.

Both build their models into the shared build cache (``$OFFLOAD_CACHE_DIR`` or
``~/.cache/offload``), one folder per width, so only the first run pays for the builds. Tests
are skipped, naming the tool, where Verilator or a C++ toolchain is missing.
"""

from __future__ import annotations

import functools
import itertools
import random

import pytest

from hdl.kernels.crc32c import Crc32cKernel
from hdl.stream import WIDTHS
from sim import toolchain
from sim.toolchain import ToolchainError

google_crc32c = pytest.importorskip("google_crc32c", reason="google-crc32c is not installed")

TESTBENCH = "tests.kernels.cocotb_crc32c"

# cocotb tests in the testbench: 9 idle/backpressure runs, the malformed-beat test and II = 1.
COCOTB_TESTS = 11


@pytest.fixture(autouse=True)
def _verilator():
    try:
        toolchain.verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


def crc_bytes(message: bytes) -> bytes:
    return google_crc32c.value(message).to_bytes(4, "little")


@pytest.mark.parametrize("width", WIDTHS)
def test_cocotb(width, tmp_path):
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(
        functools.partial(Crc32cKernel, width), f"crc32c_w{width}", TESTBENCH, tmp_path,
        parameters={"width": width}, timeout_s=300,
    )
    assert result.tests == COCOTB_TESTS
    assert result.skipped == (1 if width == 1 else 0)  # no malformed nbytes fits at W=1
    print(f"cocotb W={width}: {result.cycles_per_second(10):,.0f} cycles/s (wall clock)")


@functools.cache
def harness(width: int):
    from sim.harness import StreamHarness

    return StreamHarness.for_component(
        functools.partial(Crc32cKernel, width), f"crc32c_w{width}", width
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_harness_random(width):
    rng = random.Random(width)
    sizes = [0, 1, width - 1, width, width + 1, 4, 5]
    messages = [rng.randbytes(size) for size in sizes]
    messages += [rng.randbytes(rng.randint(0, 2048)) for _ in range(200)]
    result = harness(width).run(messages)
    assert len(result.outputs) == len(messages)
    for number, (message, output, error) in enumerate(
        zip(messages, result.outputs, result.errors, strict=True)
    ):
        assert output == crc_bytes(message), f"message {number} of {len(message)} bytes"
        assert not error, f"message {number}: error on good input"


@pytest.mark.parametrize("width", WIDTHS)
def test_harness_ii1(width):
    """Full messages back to back: one beat a cycle, no stall, responses a message apart."""
    n, count = 256, 16
    rng = random.Random(100 + width)
    messages = [rng.randbytes(width * n) for _ in range(count)]
    result = harness(width).run(messages)
    assert result.outputs == [crc_bytes(m) for m in messages]

    beats = n * count
    response_beats = max(1, 4 // width)
    assert result.input_stalls == 0, f"{result.input_stalls} cycles without ready"
    # From the first beat taken to the last response beat: every input beat, then the
    # pipeline's latency and the last response's beats.
    overhead = result.active_cycles - beats
    assert overhead <= Crc32cKernel.LATENCY + 3 + response_beats, (
        f"{result.active_cycles} cycles for {beats} beats"
    )
    spacing = {b - a for a, b in itertools.pairwise(result.end_cycles)}
    assert spacing == {n}, f"responses not one message ({n} cycles) apart: {sorted(spacing)}"


@pytest.mark.parametrize("width", WIDTHS)
def test_harness_speed(width):
    """The harness runs long messages through the kernel; its speed is printed, not asserted.

    The figure that matters is cycles per CPU second of the harness's own simulation loop,
    which does not depend on what else the machine runs; wall-clock cycles per second is shown
    beside it. No test asserts a speed: the bench reports it.
    """
    rng = random.Random(7)
    messages = [rng.randbytes(65536) for _ in range(16)]
    result = harness(width).run(messages)
    assert result.outputs == [crc_bytes(m) for m in messages]
    assert result.cycles >= len(messages) * 65536 // width
    cpu = result.cycles / result.cpu_seconds if result.cpu_seconds > 0 else float("inf")
    print(
        f"harness W={width}: {cpu / 1e6:.2f} M cycles per CPU second "
        f"({result.cycles_per_second / 1e6:.2f} M per wall-clock second)"
    )
