"""The UDP link adapters (``hdl/eth/link.py``): their parameters, and their cocotb testbench
(``tests/eth/cocotb_link_adapters.py``, frames and datagrams from the host codec) under
Verilator."""

import pytest

from hdl.eth.link import DatagramFrames, FramesDatagram
from hdl.link import protocol as p
from sim.toolchain import ToolchainError, verilator_root

PATTERN_RUNS = 9  # the shared idle patterns by the shared backpressure patterns
#: A smaller max_frame than a datagram's, so that random frames are counted as long.
MAX_FRAME = p.HEADER_SIZE + p.MAX_PAYLOAD + p.CRC_SIZE
LINGER = 16


def _need_cocotb():
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


def test_parameters_checked():
    with pytest.raises(ValueError):
        DatagramFrames(max_frame=13)
    with pytest.raises(ValueError):
        FramesDatagram(max_datagram=13)
    with pytest.raises(ValueError):
        FramesDatagram(max_datagram=1 << 16)
    with pytest.raises(ValueError):
        FramesDatagram(linger=-1)
    assert DatagramFrames().max_frame == p.MAX_DATAGRAM
    assert (FramesDatagram().max_datagram, FramesDatagram().linger) == (p.MAX_DATAGRAM, 16)


def test_datagram_frames_cocotb(tmp_path):
    _need_cocotb()
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(
        lambda: DatagramFrames(max_frame=MAX_FRAME), "datagram_frames",
        "tests.eth.cocotb_link_adapters", tmp_path,
        parameters={"max_frame": MAX_FRAME, "seed": 1}, timeout_s=600,
        testcase=[f"split_{i}_{b}" for i in ("none", "random_50", "bursty")
                  for b in ("none", "random_50", "bursty")] + ["split_edge_cases"],
    )
    assert result.tests == PATTERN_RUNS + 1 and result.skipped == 0  # a failed test raises


def test_frames_datagram_cocotb(tmp_path):
    _need_cocotb()
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(
        lambda: FramesDatagram(max_datagram=p.MAX_DATAGRAM, linger=LINGER), "frames_datagram",
        "tests.eth.cocotb_link_adapters", tmp_path,
        parameters={"max_datagram": p.MAX_DATAGRAM, "linger": LINGER, "seed": 1},
        timeout_s=600,
        testcase=[f"pack_{i}_{b}" for i in ("none", "random_50", "bursty")
                  for b in ("none", "random_50", "bursty")]
        + ["pack_small_frames_share", "pack_guards", "pack_linger_bound"],
    )
    assert result.tests == PATTERN_RUNS + 3 and result.skipped == 0  # a failed test raises


@pytest.mark.parametrize("linger", [0, 1, 3])
def test_frames_datagram_short_linger_cocotb(linger, tmp_path):
    _need_cocotb()
    from sim.cocotb_runner import run_cocotb

    result = run_cocotb(
        lambda: FramesDatagram(linger=linger), f"frames_datagram_l{linger}",
        "tests.eth.cocotb_link_adapters", tmp_path,
        parameters={"max_datagram": p.MAX_DATAGRAM, "linger": linger, "seed": 1},
        timeout_s=300, testcase="pack_linger_bound",
    )
    assert result.tests == 1 and result.skipped == 0  # a failed test raises
