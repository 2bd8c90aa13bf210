"""The acceptor's bench rows: the CPU model's rate, the replicated log's append latency
(measured on CPU acceptors and on virtual boards, derived for real boards), P4xos cited."""

from __future__ import annotations

import math
import random

from boards import BOARDS, ETH_BOARDS
from offload.bench import CITED, DERIVED, MEASURED, BenchReport
from offload.kernels.paxos import ACCEPTOR, P4XOS_MSGS_PER_S


def test_acceptor_bench_rows_are_labelled(paxos_boards):
    params = ACCEPTOR.resolve()
    op, args = ACCEPTOR.workload(params, 4096, random.Random(0))
    extra = ACCEPTOR.bench(params, op, args)
    assert extra["items"] == len(args[0]) and extra["unit"] == "messages"
    report = BenchReport()
    for what, value, unit, note, *source in extra["rows"]:
        report.add("paxos_acceptor", what, value, unit, source[0] if source else MEASURED, note)
    rows = {row.what: row for row in report.rows}
    assert rows["CPU model (AcceptorModel.handle)"].source == MEASURED
    assert rows["CPU model (AcceptorModel.handle)"].value > 0
    host = rows["ReplicatedLog.append on 3 CPU acceptors"]
    board = rows["ReplicatedLog.append on 3 virtual boards"]
    assert host.source == board.source == MEASURED
    assert math.isfinite(board.value) and board.value > 0 and host.value > 0
    for name, spec in BOARDS.items():
        real = rows[f"ReplicatedLog.append on 3 {name} boards"]
        assert real.source == DERIVED
        # The virtual boards' time, and on top of it the link's for a 2A and a 2B, at least.
        assert real.value > board.value + 2 * 48 * 10 / spec.link_baud * 1e3
        assert "virtual boards' time" in real.note
    for name in ETH_BOARDS:  # a datagram each way at 1 Gb/s: microseconds on the wire
        real = rows[f"ReplicatedLog.append on 3 {name} boards"]
        assert real.source == DERIVED and "1 Gb/s" in real.note
        assert board.value < real.value < board.value + 0.01
    cited = rows["P4xos acceptor on a Tofino switch ASIC"]
    assert cited.source == CITED and cited.value == P4XOS_MSGS_PER_S and "P4xos" in cited.note
