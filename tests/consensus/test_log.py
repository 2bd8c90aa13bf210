"""``ReplicatedLog`` over devices: appends and reads, competing proposers, lost acceptors, a
full log, bad values; on CPU acceptors, on virtual boards, and on a mix; and ``offload demo
paxos`` end to end with a board killed."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

import offload
from offload.cli import main
from offload.consensus import MAX_VALUE, LogFull, NoQuorum, ReplicatedLog
from offload.consensus.demo import run_demo


def cpu_acceptors(n: int, instances: int = 64) -> list:
    return [offload.open("cpu", params={"paxos_acceptor": {"instances": instances}})
            for _ in range(n)]


def test_appends_are_read_back_in_order():
    with ReplicatedLog(cpu_acceptors(3)) as log:
        values = [f"value {k}".encode() for k in range(20)] + [b"", bytes(range(MAX_VALUE))]
        instances = [log.append(v) for v in values]
        assert instances == list(range(len(values)))
        assert [log.read(i) for i in instances] == values
        assert [e.value for e in log.entries()] == values
        assert {e.proposer for e in log.entries()} == {1}
        assert log.read(len(values)) is None  # nothing decided there
        assert len(log) == len(values)


def test_another_proposer_learns_the_log_in_one_round():
    """A log that has seen nothing learns every entry another proposer decided: the values
    and who appended them, in one round for the whole read (a phase 1 a window of 16)."""
    acceptors = cpu_acceptors(3)
    with ReplicatedLog(acceptors, proposer=1) as writer:
        values = [f"value {k}".encode() for k in range(22)]
        for value in values:
            writer.append(value)
    with ReplicatedLog(acceptors, proposer=2) as reader:
        entries = reader.entries()
        assert [e.value for e in entries] == values
        assert {e.proposer for e in entries} == {1}
        assert reader.counts["rounds"] == 1 and reader.counts["nacks"] == 0
        assert len(reader) == len(values)


def test_bad_values_and_instances_are_refused_before_anything_is_sent():
    acceptors = cpu_acceptors(3)
    with ReplicatedLog(acceptors) as log:
        with pytest.raises(ValueError, match=f"at most {MAX_VALUE} bytes"):
            log.append(bytes(MAX_VALUE + 1))
        with pytest.raises(TypeError, match="bytes"):
            log.append("text")
        with pytest.raises(IndexError, match="outside the log's 64"):
            log.read(64)
    assert all(not d.stats()["kernels"] for d in acceptors)


def test_a_full_log_says_so():
    with ReplicatedLog(cpu_acceptors(3, instances=4)) as log:
        for k in range(4):
            assert log.append(bytes([k])) == k
        with pytest.raises(LogFull, match="all 4 instances"):
            log.append(b"one more")


def test_a_learner_for_another_quorum_is_refused():
    learner = offload.open("cpu", params={"paxos_learner": {"quorum": 2, "instances": 64}})
    with pytest.raises(ValueError, match="quorum of 2; 5 acceptors need 3"):
        ReplicatedLog(cpu_acceptors(5), learner)


def test_a_minority_lost_is_carried_and_a_majority_lost_is_named():
    acceptors = cpu_acceptors(5)
    with ReplicatedLog(acceptors) as log:
        log.append(b"before")
        acceptors[0].close()
        acceptors[3].close()
        assert log.append(b"two lost of five") == 1
        assert set(log.down) == {0, 3}
        acceptors[4].close()
        with pytest.raises(NoQuorum, match="a quorum is 3 of 5") as caught:
            log.append(b"three lost")
        assert "acceptor 4 (cpu)" in str(caught.value)
        assert log.read(0) == b"before"


def _compete(logs, appends: int) -> dict[int, list[tuple[int, bytes]]]:
    appended = {log.proposer: [] for log in logs}
    errors = []

    def run(log):
        try:
            for k in range(appends):
                value = f"p{log.proposer}-{k}".encode()
                appended[log.proposer].append((log.append(value), value))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return appended


def check_log(logs, appended) -> None:
    """Every proposer reads the same log; it is every append once, where append said."""
    views = [log.entries() for log in logs]
    assert all(view == views[0] for view in views)
    values = [e.value for e in views[0]]
    want = sorted(v for pairs in appended.values() for _, v in pairs)
    assert sorted(values) == want  # every value once, none lost, none twice
    for pairs in appended.values():
        for instance, value in pairs:
            assert values[instance] == value


def test_competing_proposers_agree_on_cpu_acceptors():
    acceptors = cpu_acceptors(3, instances=256)
    logs = [ReplicatedLog(acceptors, proposer=p) for p in (1, 2, 3)]
    appended = _compete(logs, 40)
    check_log(logs, appended)
    # Not vacuous: they did pre-empt each other, and learned each other's values.
    assert sum(log.counts["nacks"] for log in logs) > 0
    assert sum(log.counts["learned"] for log in logs) > 0


def test_competing_proposers_agree_on_virtual_boards_and_a_mix(fresh_boards):
    boards, learner = fresh_boards
    mixed = [boards[0], boards[1], *cpu_acceptors(1)]
    for acceptors in (boards, mixed):
        for device in acceptors:
            device.reset("paxos_acceptor")
        logs = [ReplicatedLog(acceptors, learner, proposer=1),
                ReplicatedLog(acceptors, proposer=2)]  # a board learner and a CPU one
        appended = _compete(logs, 12)
        check_log(logs, appended)
        for log in logs:
            log.close()
    for board in boards:
        assert board.stats()["kernels"]["paxos_acceptor"]["errors"] == 0


def test_the_demo_keeps_the_log_with_an_acceptor_lost():
    """The demo's own run on CPU acceptor devices (``--device cpu`` three times): the last
    is disconnected halfway, and every check passes."""
    events = []
    result = run_demo(urls=["cpu"] * 3, appends=30, learners="cpu", on_event=events.append)
    assert result.ok, result.checks
    assert len(result.entries) == 60
    assert events == [result.killed] and "disconnected" in result.killed
    spec, answered, failed = result.acceptors[2]
    assert spec == "cpu" and answered > 0 and failed > 0
    assert all(failed == 0 for _, _, failed in result.acceptors[:2])


def test_offload_demo_paxos_on_virtual_boards_kills_one(paxos_boards):
    """The command as a user runs it: three acceptor boards and two learner boards started,
    one acceptor killed halfway, the log printed and checked."""
    result = CliRunner().invoke(main, ["demo", "paxos", "--acceptors", "3", "--appends", "15"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "virtual board killed" in out
    for check in ("agreement", "complete", "appends"):
        assert f"pass {check}" in out
    assert "FAIL" not in out
    assert "the log (30 instances)" in out
    assert "acceptor 0 (sim:icebreaker): answered" in out and "0 failed" in out
    lost = next(line for line in out.splitlines() if line.startswith("acceptor 2 "))
    assert not lost.endswith(" 0 failed"), lost
