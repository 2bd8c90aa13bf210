"""The Paxos proposer, without input or output: it makes messages and takes answers, and
whoever drives it (a replicated log over devices, the safety suite's simulated network)
carries them.

A proposer runs phase 1 for a range of instances at once (one 1A per instance, the same to
every acceptor) and phase 2 per value. An instance is *prepared* once a quorum of distinct
acceptors has promised it in the proposer's current round; its value is then the one voted
for in the highest round among those promises (Paxos's rule: a value that may have been
chosen is kept), or, if none of them voted, the proposer's own. A NACK, or a driver's
timeout, starts a new round above every round the proposer has heard of, and phase 1 again.
"""

from __future__ import annotations

from hdl.kernels.paxos_format import ACCEPT, NACK, PREPARE, PROMISE, Message, round_of

__all__ = ["Proposer"]


class Proposer:
    """One proposer's rounds, promises and prepared instances.

    Parameters
    ----------
    proposer_id : int
        1 to 255: the low byte of every round it uses, so no two proposers share a round.
    acceptors : int
        How many acceptors there are.
    quorum : int, optional
        Promises that prepare an instance; a majority by default.
    """

    def __init__(self, proposer_id: int, acceptors: int, quorum: int | None = None):
        self.id = proposer_id
        self.acceptors = acceptors
        self.quorum = quorum if quorum is not None else acceptors // 2 + 1
        if not acceptors // 2 < self.quorum <= acceptors:
            raise ValueError(f"A quorum of {acceptors} acceptors is a majority of them, not "
                             f"{self.quorum!r}")
        self.attempt = 0
        self.round = round_of(0, proposer_id)
        self.highest_seen = 0  # the highest round a NACK named
        self.preempted = False  # a NACK above this round came: start a new one
        self._promises: dict[int, dict[int, tuple[int, bytes]]] = {}
        self.prepared: dict[int, bytes | None] = {}

    def new_round(self) -> int:
        """Start a round above every round heard of (after a NACK or a timeout); the promises
        of the last one are forgotten. Returns the round."""
        self.attempt += 1
        while round_of(self.attempt, self.id) <= self.highest_seen:
            self.attempt += 1
        self.round = round_of(self.attempt, self.id)
        self.preempted = False
        self._promises.clear()
        self.prepared.clear()
        return self.round

    def prepare(self, instances) -> list[Message]:
        """The 1A messages of phase 1 for ``instances``, in this round (send each to every
        acceptor)."""
        return [Message(PREPARE, i, self.round) for i in instances]

    def accept(self, instance: int, value: bytes) -> Message:
        """The 2A of phase 2 for a prepared ``instance``: with the value a promise reported, or
        ``value`` if none did (send it to every acceptor). Raises KeyError for an instance not
        prepared in this round."""
        kept = self.prepared[instance]
        return Message(ACCEPT, instance, self.round, 0, value if kept is None else kept)

    def receive(self, message: Message) -> int | None:
        """Take an acceptor's answer. Returns the instance it prepared, if it did."""
        if message.type == NACK:
            self.highest_seen = max(self.highest_seen, message.round)
            if message.round > self.round:
                self.preempted = True
            return None
        if message.type != PROMISE or message.round != self.round:
            return None  # a 2B, or an answer from an earlier round
        i = message.instance
        promises = self._promises.setdefault(i, {})
        promises[message.acceptor] = (message.vround, message.value)
        if i in self.prepared or len(promises) < self.quorum:
            return None
        vround, value = max(promises.values(), key=lambda p: p[0])
        self.prepared[i] = value if vround else None
        return i
