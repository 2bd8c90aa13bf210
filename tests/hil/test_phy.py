"""The device top at pin level under Verilator: UART PHY and link at the board's baud divisor,
with the far end in step and 2% off both ways."""

import pytest

from offload.gateware import device_design
from sim.toolchain import ToolchainError, verilator_root


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_uart_phy_and_link_at_board_rate(board, tmp_path):
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")
    from boards import get_board
    from sim.cocotb_runner import run_cocotb

    pytest.importorskip("cocotbext.uart", reason="cocotbext-uart (the independent far end) is "
                                                 "not installed")
    design = device_design(board)
    top = design.top("pins")
    spec = get_board(board)
    # The real board's divisor: 3 Mbaud from the PLL's clock, 8 or 16 cycles a bit.
    assert top.divisor == spec.device_hz() // spec.link_baud == design.clock_hz // 3_000_000
    result = run_cocotb(top, design.module_name("pins"), "tests.hil.cocotb_phy", tmp_path,
                        parameters={"divisor": top.divisor}, timeout_s=600)
    assert result.tests == 2 and result.skipped == 0  # a failed test raises
