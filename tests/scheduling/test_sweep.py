"""``offload bench --kernel K --sweep NAME=V1,V2,...``: the cost curve of a parameter (the PIFO's
capacity), each board to its limit; with fake builds for the logic, and once for real."""

from __future__ import annotations

import json
import types

import pytest
from click.testing import CliRunner

from boards.build import BuildError
from offload.bench import DERIVED, MEASURED
from offload.cli import main
from offload.kernels import ParamError, get
from offload.sweep import parse_sweep, run_sweep, write_sweep_plot


def test_parse_sweep_checks_the_parameter_and_its_values():
    pifo = get("pifo")
    assert parse_sweep(pifo, "capacity=8, 16,32,16") == ("capacity", [8, 16, 32])
    for bad in ("capacity", "capacity=", "size=8,16", "capacity=8", "capacity=0,8",
                "capacity=8,x"):
        with pytest.raises(ParamError):
            parse_sweep(pifo, bad)


def fake_build(limits: dict[str, int]):
    """Builds whose fmax falls and logic grows with the capacity, failing past a board's
    limit; and a record of what was built."""
    built = []

    def build(board, spec, params):
        capacity = params["capacity"]
        built.append((board, capacity))
        if capacity > limits[board]:
            raise BuildError(f"nextpnr: {capacity * 100} of 5280 ICESTORM_LC")
        return types.SimpleNamespace(fmax_mhz=200 / capacity ** 0.5,
                                     resources={"ICESTORM_LC": (80 * capacity, 5280)})
    return build, built


def test_each_board_stops_at_its_limit_and_the_rows_say_how_they_were_got(tmp_path):
    build, built = fake_build({"small": 32, "big": 128})
    report = run_sweep(get("pifo"), "capacity", [8, 16, 32, 64, 128, 256],
                       boards=["small", "big"], build=build,
                       measure=lambda spec, params: (1.0, "operations", ("heapq", 5e6)))
    # A board is not built past the first value it does not hold.
    assert built == [("small", 8), ("small", 16), ("small", 32), ("small", 64),
                     ("big", 8), ("big", 16), ("big", 32), ("big", 64), ("big", 128),
                     ("big", 256)]
    assert any("capacity=64 on small" in line and "at 32 or above" in line
               for line in report.skipped)
    fmax = {r.what: r for r in report.rows if r.what.endswith(": fmax")}
    assert set(fmax) == {f"capacity={c} on small: fmax" for c in (8, 16, 32)} | \
        {f"capacity={c} on big: fmax" for c in (8, 16, 32, 64, 128)}
    assert all(r.source == MEASURED for r in fmax.values())
    rates = [r for r in report.rows if r.what.endswith("per second at fmax")]
    assert rates and all(r.source == DERIVED for r in rates)
    assert rates[0].value == pytest.approx(fmax["capacity=8 on small: fmax"].value * 1e6)
    heapq = [r for r in report.rows if "heapq" in r.what]
    assert len(heapq) == 6 and all(r.source == MEASURED for r in heapq)
    pytest.importorskip("matplotlib")
    write_sweep_plot(report, "capacity", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_the_pifo_cost_curve_from_the_command_line(tmp_path):
    """Two real builds of the PIFO for the iCEBreaker and their Verilator measures: fmax and
    logic measured, the logic growing with the capacity."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "curve.json"
    result = CliRunner().invoke(main, ["bench", "--kernel", "pifo", "--sweep", "capacity=2,8",
                                       "--board", "icebreaker", "--json", str(out), "--plot",
                                       str(tmp_path / "curve.png")])
    if result.exit_code and ("Verilator" in result.output or "yowasp" in result.output):
        pytest.skip(f"the sweep needs Verilator and YoWASP nextpnr: {result.output[-300:]}")
    assert result.exit_code == 0, result.output
    rows = {r["what"]: r for r in json.loads(out.read_text())["rows"]}
    small, large = (rows[f"capacity={c} on icebreaker: logic"] for c in (2, 8))
    assert small["source"] == large["source"] == MEASURED
    assert 0 < small["value"] < large["value"]
    assert rows["capacity=8 on icebreaker: fmax"]["value"] > 0
    # A byte a beat on the iCEBreaker: an 8-byte record takes 8 cycles to come in.
    assert 8 <= rows["capacity=2: gateware cycles per operation, 1 B/cycle"]["value"] < 17
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_a_sweep_takes_one_kernel():
    result = CliRunner().invoke(main, ["bench", "--sweep", "capacity=8,16"])
    assert result.exit_code == 2 and "exactly one --kernel" in result.output
    result = CliRunner().invoke(main, ["bench", "--kernel", "pifo", "--sweep", "depth=8,16"])
    assert result.exit_code == 2 and "no parameter 'depth'" in result.output
