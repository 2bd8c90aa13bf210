"""``ReplicatedLog``: a log of values agreed by Paxos among acceptor devices.

A log is one proposer (:class:`~offload.consensus.Proposer`) and one learner, driven over
devices: every acceptor is a device with the ``paxos_acceptor`` kernel (a board, a virtual
board, ``socket://`` boards on other machines, or the CPU: ``offload.open("cpu")``, any mix),
and the learner a device with ``paxos_learner`` (the CPU by default). :meth:`ReplicatedLog.append`
puts a value at the lowest instance the log has not yet seen decided; :meth:`ReplicatedLog.read`
says what an instance holds.

How an append goes (Multi-Paxos):

* Phase 1 runs once for a window of instances (``window``, 16 by default), one batch of 1A
  messages per acceptor, in the proposer's round. While the round lasts, every append is phase 2
  alone: one 2A to every acceptor, and the 2B answers, in one batch, to the learner.
* The value decided is the learner's DELIVER. If it is another proposer's value (phase 1
  reported a vote for it, which Paxos must keep), the log records it and tries the next instance.
* A NACK (an acceptor promised a higher round), or fewer than a quorum of votes, starts a new
  round after a random backoff, so that two proposers that keep pre-empting each other draw
  apart. An acceptor whose device fails (a board unplugged or killed) counts as silent; the log
  goes on while a quorum answers, and raises :class:`NoQuorum` when none does.

Several logs over the same acceptors (one per proposer, each with its own learner) are
competing proposers of one log: each sees the values the others decided, by running Paxos on
the instances it has not seen (a value voted for is always proposed again, so it learns it).

Each value carries who appended it: the 32-byte value of a message is the proposer id (1 byte),
the value's length (1 byte), the append's sequence number per proposer (2 bytes) and up to
:data:`MAX_VALUE` bytes of the value. An append is recognised as its own by that tag, so two
proposers appending equal bytes get two entries, and a retried append never lands twice.

A log holds as many instances as the smallest table among its acceptors and learner; there is
no truncation: a full log raises :class:`LogFull`.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from hdl.kernels.paxos_format import ACCEPTED, MAX_ACCEPTORS, NACK, VALUE_BYTES, Message

from ..errors import DeviceError
from .proposer import Proposer

__all__ = ["ReplicatedLog", "Entry", "NoQuorum", "LogFull", "MAX_VALUE"]

_TAG = struct.Struct("<BBH")
#: Bytes of a value :meth:`ReplicatedLog.append` takes (the rest of the 32 are its tag).
MAX_VALUE = VALUE_BYTES - _TAG.size


class NoQuorum(DeviceError):
    """Fewer than a quorum of acceptors answered: the log cannot decide anything."""


class LogFull(DeviceError):
    """Every instance of the acceptors' tables is decided."""


@dataclass(frozen=True)
class Entry:
    """A decided instance: its value, and who appended it (a proposer id and its append's
    sequence number)."""

    instance: int
    value: bytes
    proposer: int
    sequence: int

    def __str__(self) -> str:
        return f"{self.instance}: {self.value!r} (proposer {self.proposer} #{self.sequence})"


def tag(proposer: int, sequence: int, value: bytes) -> bytes:
    """The 32-byte message value of a log entry."""
    return (_TAG.pack(proposer, len(value), sequence & 0xFFFF) + value).ljust(VALUE_BYTES, b"\0")


def untag(instance: int, data: bytes) -> Entry:
    proposer, length, sequence = _TAG.unpack_from(data)
    return Entry(instance, bytes(data[_TAG.size:_TAG.size + min(length, MAX_VALUE)]), proposer,
                 sequence)


class ReplicatedLog:
    """A replicated log over acceptor devices (see the module doc).

    Parameters
    ----------
    acceptors : list of Device
        Devices with the ``paxos_acceptor`` kernel, 1 to 8 (acceptor ids 0 to 7, in order).
    learner : Device, optional
        A device with ``paxos_learner`` built for this quorum; a CPU learner if None. It is
        this log's own: it is reset when the log is made.
    proposer : int
        This log's proposer id, 1 to 255; logs over the same acceptors need different ones.
    window : int
        Instances prepared by one phase 1.
    attempts : int
        Rounds an append or a read tries before it gives up (raising :class:`NoQuorum`).
    backoff : float
        Seconds: the first retry waits up to this long, each later one up to twice the last's.
    fresh : bool
        Reset the acceptors first: a new, empty log. Never do this under a running log.
    """

    def __init__(self, acceptors, learner=None, *, proposer: int = 1, window: int = 16,
                 attempts: int = 40, backoff: float = 0.002, fresh: bool = False):
        self.acceptors = list(acceptors)
        n = len(self.acceptors)
        if not 1 <= n <= MAX_ACCEPTORS:
            raise ValueError(f"A log has 1 to {MAX_ACCEPTORS} acceptors, not {n}")
        if window < 1 or attempts < 1:
            raise ValueError("window and attempts are at least 1")
        self.quorum = n // 2 + 1
        self._proposer = Proposer(proposer, n, self.quorum)
        if learner is None:
            import offload

            learner = offload.open("cpu", params={"paxos_learner": {
                "quorum": self.quorum, "instances": self._table_size("paxos_acceptor")}})
        self.learner = learner
        have = int(learner.params("paxos_learner")["quorum"])
        if have != self.quorum:
            raise ValueError(f"the learner {learner.spec!r} counts a quorum of {have}; "
                             f"{n} acceptors need {self.quorum}")
        self.instances = min(self._table_size("paxos_acceptor"),
                             int(learner.params("paxos_learner")["instances"]))
        self.window, self.attempts, self.backoff = window, attempts, backoff
        self._rng = random.Random(proposer * 7919 + time.monotonic_ns())
        self._lock = threading.RLock()
        self._decided: dict[int, Entry] = {}
        self._next = 0
        self._sequence = 0
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="offload-acceptor")
        self._down: dict[int, str] = {}  # acceptor -> why its last call failed
        #: Counts: rounds started, NACKs, acceptor failures, learned (others' values), ...
        self.counts: Counter[str] = Counter()
        #: Per acceptor: calls it answered, and calls that failed.
        self.answered: Counter[int] = Counter()
        self.failed: Counter[int] = Counter()
        if fresh:
            for device in self.acceptors:
                device.reset("paxos_acceptor")
        learner.reset("paxos_learner")

    def _table_size(self, kernel: str) -> int:
        return min(int(device.params(kernel)["instances"]) for device in self.acceptors)

    # -- the log -----------------------------------------------------------------------------

    @property
    def proposer(self) -> int:
        return self._proposer.id

    def append(self, value: bytes) -> int:
        """Put ``value`` (up to :data:`MAX_VALUE` bytes) in the log; the instance it is at.

        Raises :class:`NoQuorum` if a quorum of acceptors does not answer, :class:`LogFull` when
        the tables are full.
        """
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"a log value is bytes, not {type(value).__name__}")
        if len(value) > MAX_VALUE:
            raise ValueError(f"a log value is at most {MAX_VALUE} bytes, not {len(value)}")
        with self._lock:
            self._sequence += 1
            mine = tag(self.proposer, self._sequence, bytes(value))
            while True:
                instance = self._next
                if instance >= self.instances:
                    raise LogFull(f"the log is full: all {self.instances} instances of the "
                                  "acceptors' tables are decided")
                entry = self._decide(instance, mine)
                if entry is not None and self._tag_of(entry) == mine:
                    self.counts["appended"] += 1
                    return instance
                self.counts["learned"] += 1  # another proposer's value: the next instance

    def read(self, instance: int) -> bytes | None:
        """The value at ``instance``, or None if nothing is decided there.

        An instance this log has not seen decided is asked of the acceptors (phase 1); a value
        voted for there is proposed again, so a value another proposer decided is learned.
        """
        entry = self.entry(instance)
        return None if entry is None else entry.value

    def entry(self, instance: int) -> Entry | None:
        """Like :meth:`read`, with who appended the value."""
        if not 0 <= instance < self.instances:
            raise IndexError(f"instance {instance} is outside the log's {self.instances}")
        with self._lock:
            if instance not in self._decided:
                self._decide(instance, None)
            return self._decided.get(instance)

    def entries(self, upto: int | None = None) -> list[Entry]:
        """Every decided entry below ``upto`` (default: up to the first instance with nothing
        decided), learning those the log has not seen: one round for the whole call, its phase
        1 a window at a time, not a round for each instance as :meth:`entry` takes."""
        out = []
        with self._lock:
            fresh = True  # the first instance to learn starts the call's round
            for instance in range(self.instances if upto is None else upto):
                if instance not in self._decided:
                    self._decide(instance, None, fresh=fresh)
                    fresh = False
                entry = self._decided.get(instance)
                if entry is None:
                    if upto is None:
                        break
                    continue
                out.append(entry)
        return out

    def __len__(self) -> int:
        """Instances this log has seen decided, from 0 without a gap."""
        return self._next

    @property
    def down(self) -> dict[int, str]:
        """Acceptors whose last call failed, and why."""
        return dict(self._down)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ReplicatedLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _tag_of(entry: Entry) -> bytes:
        return tag(entry.proposer, entry.sequence, entry.value)

    # -- Paxos -------------------------------------------------------------------------------

    def _decide(self, instance: int, value: bytes | None, *, fresh: bool = True
                ) -> Entry | None:
        """Run Paxos on ``instance`` until it is decided (with ``value`` if nothing else may
        be) and record the entry. With ``value`` None, only a value voted for is proposed:
        None is returned if phase 1 finds none; and unless ``fresh`` is False (a promise
        already taken for this read), it starts a round of its own, since promises from an
        earlier round may predate votes other proposers have made since."""
        p = self._proposer
        for attempt in range(self.attempts):
            if attempt or p.preempted or (value is None and fresh):
                if attempt:
                    self._sleep(attempt)
                p.new_round()
                self.counts["rounds"] += 1
            if instance not in p.prepared:
                self._phase1(range(instance, min(instance + self.window, self.instances)))
                if p.preempted or instance not in p.prepared:
                    continue
            if value is None and p.prepared[instance] is None:
                return None  # nothing voted for in a quorum: nothing can have been decided
            votes = self._phase2(p.accept(instance, value or b""))
            if len(votes) < self.quorum:
                continue
            delivered = self.learner.paxos_learner(votes)
            if not delivered:
                raise DeviceError(
                    f"the learner {self.learner.spec!r} took a quorum of votes for instance "
                    f"{instance} in round {p.round} and delivered nothing: is it another log's?")
            entry = untag(instance, delivered[0].value)
            self._decided[instance] = entry
            while self._next in self._decided:
                self._next += 1
            return entry
        raise NoQuorum(self._no_quorum(f"instance {instance} is not decided after "
                                       f"{self.attempts} rounds"))

    def _sleep(self, attempt: int) -> None:
        time.sleep(self._rng.uniform(0, self.backoff * 2 ** min(attempt, 6)))

    def _no_quorum(self, what: str) -> str:
        why = "; ".join(f"acceptor {k} ({self.acceptors[k].spec}): {reason}"
                        for k, reason in sorted(self._down.items()))
        return (f"{what}: a quorum is {self.quorum} of {len(self.acceptors)} acceptors"
                + (f", and these fail: {why}" if why else ", and NACKs kept pre-empting it"))

    def _call_all(self, messages: list[Message]) -> list[list[Message]]:
        """``messages`` to every acceptor (addressed to it), at once; each one's answers (an
        empty list from an acceptor whose device failed)."""
        def call(k: int) -> list[Message]:
            batch = [replace(m, acceptor=k) for m in messages]
            try:
                answers = self.acceptors[k].paxos_acceptor(batch)
            except DeviceError as exc:
                self._down[k] = str(exc).split(" (")[0]
                self.counts["acceptor failures"] += 1
                self.failed[k] += 1
                return []
            self._down.pop(k, None)
            self.answered[k] += 1
            return answers
        results = list(self._pool.map(call, range(len(self.acceptors))))
        if sum(1 for r in results if r) < self.quorum:
            raise NoQuorum(self._no_quorum("fewer than a quorum of acceptors answer"))
        return results

    def _phase1(self, instances: range) -> None:
        p = self._proposer
        for answers in self._call_all(p.prepare(instances)):
            for answer in answers:
                if answer.type == NACK:
                    self.counts["nacks"] += 1
                p.receive(answer)

    def _phase2(self, accept: Message) -> list[Message]:
        p = self._proposer
        votes = []
        for answers in self._call_all([accept]):
            for answer in answers:
                if answer.type == ACCEPTED and answer.round == p.round:
                    votes.append(answer)
                else:
                    if answer.type == NACK:
                        self.counts["nacks"] += 1
                    p.receive(answer)
        return votes
