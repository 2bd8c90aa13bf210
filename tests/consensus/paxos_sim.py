"""A simulated network for Paxos with faults, and the checks of Paxos's safety on it.

One *schedule* is a seeded random run: proposers (:class:`~offload.consensus.Proposer`, each
driven as a replicated log's coordinator would drive it) compete for the same instances;
acceptors and a learner answer messages; the network delivers messages in a random order
(reordering and delay), drops them, duplicates them, and crashes acceptors that never come
back (at most as many as leave a quorum alive). The acceptors are anything with
``handle(Message) -> Message`` (the CPU model, or a board), the learner likewise with
``handle(Message) -> Message | None``.

Checked while it runs, each a named violation:

* ``agreement``: no instance has two values chosen (voted for by a quorum of distinct
  acceptors in one round), and every delivery is of the chosen value, once per instance;
* ``promise_decreased``: an acceptor's promised round never goes down;
* ``vote_below_promise``: no acceptor votes (answers a 2B) in a round below its promise;
* ``delivery_without_quorum``: the learner delivers a value only after 2B messages for it
  from a quorum of distinct acceptors in one round reached it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

from hdl.kernels.paxos_format import ACCEPTED, DELIVER, PROMISE, Message
from offload.consensus import LearnerModel, Proposer

VALUE_BYTES = 32


@dataclass
class Faults:
    """Probabilities of each fault at each step, and the crash budget."""

    drop: float = 0.05
    duplicate: float = 0.05
    crash: float = 0.005
    max_crashes: int | None = None  # default: as many as leave a quorum alive


@dataclass
class Outcome:
    """What a schedule did: its violations (empty if safe), and counts."""

    seed: int
    violations: list[str] = field(default_factory=list)
    decided: int = 0
    instances: int = 0
    steps: int = 0
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _Watched:
    """An acceptor with the per-step checks around it."""

    def __init__(self, acceptor, number: int, sim: Schedule):
        self.acceptor, self.number, self.sim = acceptor, number, sim
        self.promised: dict[int, int] = defaultdict(int)  # as its answers show them

    def handle(self, message: Message) -> Message:
        before = self.promised[message.instance]
        reply = self.acceptor.handle(message)
        i = message.instance
        if reply.type == ACCEPTED:
            if reply.round < before:
                self.sim.violate("vote_below_promise",
                                 f"acceptor {self.number} voted in round {reply.round} of "
                                 f"instance {i}, below its promise {before}")
            self.promised[i] = max(before, reply.round)
            self.sim.voted(self.number, reply)
        elif reply.type == PROMISE:
            if reply.round < before:
                self.sim.violate("promise_decreased",
                                 f"acceptor {self.number} promised round {reply.round} of "
                                 f"instance {i} after round {before}")
            self.promised[i] = max(before, reply.round)
        else:  # a NACK names the promise
            if reply.round < before:
                self.sim.violate("promise_decreased",
                                 f"acceptor {self.number} named promise {reply.round} of "
                                 f"instance {i} after {before}")
            self.promised[i] = max(before, reply.round)
        return reply


class Schedule:
    """One seeded schedule (see the module doc)."""

    def __init__(self, seed: int, acceptors: list, *, proposers: int = 2, instances: int = 3,
                 faults: Faults | None = None, max_steps: int = 3000, learner=None):
        self.rng = random.Random(seed)
        self.n = len(acceptors)
        self.quorum = self.n // 2 + 1
        self.acceptors = [_Watched(a, k, self) for k, a in enumerate(acceptors)]
        self.learner = learner if learner is not None else LearnerModel(self.quorum, instances,
                                                                        VALUE_BYTES)
        self.faults = faults or Faults()
        self.max_crashes = (self.faults.max_crashes if self.faults.max_crashes is not None
                            else self.n - self.quorum)
        self.instances = instances
        self.max_steps = max_steps
        self.proposers = {pid: Proposer(pid, self.n) for pid in range(1, proposers + 1)}
        self.outcome = Outcome(seed, instances=instances)
        self.crashed: set[int] = set()
        self.decided: dict[int, bytes] = {}  # the learner's deliveries
        self.chosen: dict[int, bytes] = {}
        self.votes: dict[tuple[int, int], dict[int, bytes]] = defaultdict(dict)
        self.heard: dict[tuple[int, int, bytes], set[int]] = defaultdict(set)  # learner's 2Bs
        # In flight: (destination kind, destination, source proposer, message).
        self.flight: list[tuple[str, int, int, Message]] = []

    # -- checks ------------------------------------------------------------------------------

    def violate(self, name: str, detail: str) -> None:
        self.outcome.violations.append(f"{name}: {detail}")

    def voted(self, acceptor: int, vote: Message) -> None:
        key = (vote.instance, vote.round)
        self.votes[key][acceptor] = vote.value
        voters = [a for a, v in self.votes[key].items() if v == vote.value]
        if len(voters) >= self.quorum:
            had = self.chosen.setdefault(vote.instance, vote.value)
            if had != vote.value:
                self.violate("agreement", f"instance {vote.instance}: {had!r} and "
                                          f"{vote.value!r} both chosen")

    def _deliver(self, d: Message) -> None:
        if len(self.heard[(d.instance, d.round, d.value)]) < self.quorum:
            self.violate("delivery_without_quorum",
                         f"instance {d.instance} delivered in round {d.round} with votes from "
                         f"{sorted(self.heard[(d.instance, d.round, d.value)])}")
        if d.instance in self.decided:
            self.violate("agreement", f"instance {d.instance} delivered twice")
        if self.chosen.get(d.instance, d.value) != d.value:
            self.violate("agreement", f"instance {d.instance} delivered {d.value!r}, chosen "
                                      f"{self.chosen[d.instance]!r}")
        self.decided[d.instance] = d.value

    # -- the proposers' drivers -----------------------------------------------------------

    def _value(self, pid: int, instance: int) -> bytes:
        return f"p{pid} i{instance}".encode().ljust(VALUE_BYTES, b"\0")

    def _start(self, pid: int) -> None:
        proposer = self.proposers[pid]
        proposer.new_round()
        self.outcome.counts["rounds"] += 1
        todo = [i for i in range(self.instances) if i not in self.decided]
        for message in proposer.prepare(todo):
            for a in range(self.n):
                self.flight.append(("acceptor", a, pid, message))

    def _to_proposer(self, pid: int, message: Message) -> None:
        proposer = self.proposers[pid]
        prepared = proposer.receive(message)
        if proposer.preempted:
            # Back off half the time (a coordinator's randomized backoff), or dueling
            # proposers preempt each other for ever; a timeout restarts one that backed off.
            if self.rng.random() < 0.5:
                self._start(pid)
        elif prepared is not None and prepared not in self.decided:
            accept = proposer.accept(prepared, self._value(pid, prepared))
            for a in range(self.n):
                self.flight.append(("acceptor", a, pid, accept))

    # -- the network -------------------------------------------------------------------------

    def run(self) -> Outcome:
        for pid in self.proposers:
            self._start(pid)
        f, counts = self.faults, self.outcome.counts
        for step in range(self.max_steps):
            self.outcome.steps = step + 1
            if len(self.decided) == self.instances:
                break
            if not self.flight:  # everything lost or answered: a proposer times out
                counts["timeouts"] += 1
                self._start(self.rng.choice(list(self.proposers)))
                continue
            r = self.rng.random()
            k = self.rng.randrange(len(self.flight))
            if r < f.drop:
                self.flight.pop(k)
                counts["dropped"] += 1
                continue
            if r < f.drop + f.duplicate:
                self.flight.append(self.flight[k])
                counts["duplicated"] += 1
                continue
            if r < f.drop + f.duplicate + f.crash and len(self.crashed) < self.max_crashes:
                alive = [a for a in range(self.n) if a not in self.crashed]
                self.crashed.add(self.rng.choice(alive))
                counts["crashed"] += 1
                continue
            kind, dest, pid, message = self.flight.pop(k)  # a random one: reordered, delayed
            counts["delivered"] += 1
            if kind == "acceptor":
                if dest in self.crashed:
                    continue
                reply = self.acceptors[dest].handle(replace(message, acceptor=dest))
                self.flight.append(("proposer", pid, pid, reply))
                if reply.type == ACCEPTED:
                    self.flight.append(("learner", 0, pid, reply))
            elif kind == "learner":
                self.heard[(message.instance, message.round, message.value)].add(
                    message.acceptor)
                delivered = self.learner.handle(message)
                if delivered is not None:
                    assert delivered.type == DELIVER
                    self._deliver(delivered)
            else:
                self._to_proposer(dest, message)
        self.outcome.decided = len(self.decided)
        return self.outcome
