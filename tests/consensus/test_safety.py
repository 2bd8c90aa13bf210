"""Paxos's safety under faults, on CPU acceptors: randomized schedules (drops, duplicates,
reordering and delay, acceptors crashed for good, dueling proposers), each checked for the
four violations of ``paxos_sim``; and a broken acceptor that the same schedules catch."""

from __future__ import annotations

import pytest

from hdl.kernels.paxos_format import ACCEPT, ACCEPTED, NACK, Message
from offload.consensus import AcceptorModel

from .paxos_sim import VALUE_BYTES, Faults, Schedule


def _schedules(config) -> int:
    return 5000 if config.getoption("--slow") else 1000


def _acceptors(n: int, instances: int, broken: int | None = None) -> list:
    return [(BelowPromise if k == broken else AcceptorModel)(instances, VALUE_BYTES)
            for k in range(n)]


class BelowPromise(AcceptorModel):
    """A broken acceptor: votes for every 2A, whatever it promised."""

    def handle(self, message: Message) -> Message:
        reply = super().handle(message)
        if reply.type == NACK and message.type == ACCEPT:  # a 2A it should refuse
            i = message.instance
            self.vround[i] = message.round
            self.value[i] = message.value.ljust(self.value_bytes, b"\0")
            return Message(ACCEPTED, i, message.round, 0, self.value[i], message.acceptor)
        return reply


def _run(seed: int, broken: int | None = None):
    rng_n = (3, 5, 7)[seed % 3]
    instances = 3
    faults = Faults(drop=0.05 + 0.05 * (seed % 4), duplicate=0.05 * (seed % 3),
                    crash=0.01 * (seed % 2))
    schedule = Schedule(seed, _acceptors(rng_n, instances, broken), proposers=2 + seed % 2,
                        instances=instances, faults=faults)
    return schedule.run()


def check_outcomes(outcomes, faults: tuple[str, ...]) -> tuple[int, dict[str, int]]:
    """No schedule has a violation, and the run is not vacuous: most schedules decide every
    instance, and each of ``faults`` happened somewhere. The instances decided, and the counts
    of every kind of event over all schedules."""
    bad = [o for o in outcomes if o.violations]
    assert not bad, "\n".join(f"seed {o.seed}: {o.violations[:3]}" for o in bad[:5])
    decided = sum(o.decided for o in outcomes)
    assert decided > 0.9 * sum(o.instances for o in outcomes)
    totals: dict[str, int] = {}
    for o in outcomes:
        for name, count in o.counts.items():
            totals[name] = totals.get(name, 0) + count
    for name in faults:
        assert totals.get(name, 0) > 0, f"no schedule had any {name}"
    return decided, totals


def test_paxos_is_safe_under_faults(pytestconfig, fault_tally):
    outcomes = [_run(seed) for seed in range(_schedules(pytestconfig))]
    decided, totals = check_outcomes(outcomes, ("dropped", "duplicated", "crashed", "timeouts",
                                                "rounds"))
    fault_tally.update({"schedules": len(outcomes), "violations": 0,
                        "instances decided": decided, **totals})


def test_a_broken_acceptor_is_caught():
    """An acceptor that votes below its promise: some schedule shows the violation, and
    dueling proposers turn it into two values chosen for one instance."""
    outcomes = [_run(seed, broken=0) for seed in range(300)]
    found = {v.split(":")[0] for o in outcomes for v in o.violations}
    assert "vote_below_promise" in found
    assert "agreement" in found


@pytest.mark.parametrize("acceptors", [3, 5, 7])
def test_a_crashed_minority_does_not_stop_the_log(acceptors):
    """With a minority crashed before anything is sent, every instance is still decided."""
    schedule = Schedule(11, _acceptors(acceptors, 4), proposers=1, instances=4,
                        faults=Faults(drop=0, duplicate=0, crash=0), max_steps=5000)
    schedule.crashed = set(range(acceptors // 2))
    outcome = schedule.run()
    assert outcome.violations == [] and outcome.decided == 4


class _OnDevice:
    """A role on a device, as the schedule calls it: one message in, its answer out."""

    def __init__(self, device, kernel: str):
        self.call = getattr(device, kernel)

    def handle(self, message: Message):
        return self.call(message)


def test_paxos_is_safe_under_faults_on_virtual_boards(pytestconfig, fresh_boards, fault_tally):
    """The same schedules with the acceptors and the learner on virtual boards (three acceptor
    boards and a learner board, each a Verilator process): 20 in the default run, 200 with
    --slow. The boards' tables are cleared between schedules."""
    acceptors, learner = fresh_boards
    outcomes = []
    for seed in range(200 if pytestconfig.getoption("--slow") else 20):
        for device in acceptors:
            device.reset("paxos_acceptor")
        learner.reset("paxos_learner")
        faults = Faults(drop=0.05 + 0.05 * (seed % 4), duplicate=0.05 * (seed % 3),
                        crash=0.01 * (seed % 2))
        schedule = Schedule(seed, [_OnDevice(d, "paxos_acceptor") for d in acceptors],
                            proposers=2 + seed % 2, instances=3, faults=faults,
                            learner=_OnDevice(learner, "paxos_learner"))
        outcomes.append(schedule.run())
    decided, totals = check_outcomes(outcomes, ("dropped", "duplicated", "crashed", "rounds"))
    calls = sum(d.stats()["kernels"]["paxos_acceptor"]["gateware"] for d in acceptors)
    assert calls > 0 and all(d.stats()["errors"] == 0 for d in acceptors)
    fault_tally.update({"schedules on boards": len(outcomes), "violations": 0,
                        "instances decided": decided, "board calls": calls, **totals})
