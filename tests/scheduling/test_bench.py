"""The scheduler's and the PIFO's bench rows: every policy on the same traces (fairness figures
from the model's departures, the gateware's cycles per decision, decisions per second at each
board's fmax), and heapq beside the PIFO. In CI the builds and harnesses are the ones
``offload bench`` made just before (cached)."""

from __future__ import annotations

import math
import random

import pytest

from boards import BOARDS
from offload.bench import DERIVED, MEASURED, BenchReport
from offload.kernels.scheduling import PIFO, SCHEDULER
from offload.scheduling import POLICIES
from sim.toolchain import ToolchainError


def rows_of(spec, size: int) -> tuple[dict, dict]:
    params = spec.resolve()
    op, args = spec.workload(params, size, random.Random(0))
    try:
        extra = spec.bench(params, op, args)
    except ToolchainError as exc:
        pytest.skip(f"the bench needs Verilator and YoWASP: {exc}")
    report = BenchReport()
    for what, value, unit, note, *source in extra["rows"]:
        report.add(spec.name, what, value, unit, source[0] if source else MEASURED, note)
    return extra, {row.what: row for row in report.rows}


def test_every_policy_is_measured_on_the_same_traces():
    extra, rows = rows_of(SCHEDULER, 4096)
    assert extra["unit"] == "decisions" and extra["items"] >= 4096 // 8  # a step per arrival
    queues = SCHEDULER.resolve()["queues"]
    for policy in POLICIES:
        jain = rows[f"{policy}: Jain's index, all queues backlogged"]
        assert jain.source == MEASURED and 0 < jain.value <= 1
        saturated = rows[f"{policy}: grants per cycle, all queues backlogged"].value
        assert saturated == 1.0 if policy != "drr" else 0 < saturated < 1
        assert rows[f"{policy}: CPU model decisions per second"].value > 0
        # A cycle a decision, and one an arrival, at 8 bytes a beat; a record takes 8 beats at 1.
        per = rows[f"{policy}: gateware cycles per decision, 8 B/cycle"]
        assert per.source == MEASURED and 1 <= per.value < 3
        narrow = rows[f"{policy}: gateware cycles per decision, 1 B/cycle"]
        assert narrow.source == MEASURED and per.value < narrow.value < 8 * per.value + 1
        for board in BOARDS:
            rate = rows[f"{policy}: decisions per second on {board} at fmax"]
            if math.isnan(rate.value):
                assert "not built" in rate.note
                continue
            assert rate.source == DERIVED and rate.value > 1e6
    # Strict priority serves one queue while all are backlogged; the others share.
    assert rows["sp: Jain's index, all queues backlogged"].value == pytest.approx(1 / queues)
    assert rows["drr: Jain's index, all queues backlogged"].value > 0.95
    assert rows["sp: largest lag behind the fluid share, all backlogged"].value > \
        10 * rows["drr: largest lag behind the fluid share, all backlogged"].value


def test_the_pifo_is_set_against_heapq():
    extra, rows = rows_of(PIFO, 4096)
    assert extra["unit"] == "operations" and extra["items"] == 4096 // 8
    name, rate = extra["reference"]
    assert name == "heapq" and rate == rows["heapq push/pop on this CPU"].value > 0


def test_a_sweep_asks_the_scheduler_for_its_decisions_alone(monkeypatch):
    """``offload bench --sweep`` needs a value's items, not the four policies' builds: with
    ``rows=False`` the hook builds nothing and counts the build's own decisions."""
    import offload.build

    def no_builds(*args, **kwargs):
        raise AssertionError("the sweep's measure built something")

    monkeypatch.setattr(offload.build, "build_kernel", no_builds)
    params = SCHEDULER.resolve({"policy": "drr", "quanta": "600"})
    op, args = SCHEDULER.workload(params, 4096, random.Random(0))
    extra = SCHEDULER.bench(params, op, args, rows=False)
    assert extra["rows"] == [] and extra["unit"] == "decisions"
    # DRR with a quantum below most lengths turns queues away: more decisions than arrivals.
    assert extra["items"] > len(args[0])
