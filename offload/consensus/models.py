"""The Paxos acceptor's and learner's rules: the CPU models the gateware is checked against.

Both keep per-instance state in tables of a fixed size (the gateware's block RAM) and answer
a message with at most one message (:mod:`hdl.kernels.paxos_format`).

**Acceptor** (per instance: the promised round, the round last voted in, the value voted for):

* 1A prepare, round ``r``: if ``r >= promised``, promise (``promised = r``) and answer a 1B with
  the round and value last voted for; otherwise NACK with ``promised``.
* 2A accept, round ``r``: if ``r >= promised``, vote (``promised = vround = r``, the value kept)
  and answer a 2B; otherwise NACK with ``promised``.

The comparison for 1A is ``>=``, as P4xos's, not the ``>`` of Paxos Made Simple and the
Promela model. Rounds are unique to a proposer (:func:`~hdl.kernels.paxos_format.round_of`),
so a prepare of the round already promised can only be that proposer's own, repeated: a
retransmission after its promise was lost, or a duplicate on the network. With ``>`` it would
be NACKed and the proposer would have to start a new round for an answer it was already
given, which under loss can go on for ever; with ``>=`` the acceptor answers it again, which
changes nothing (the promise is the one it made) and lets the proposer recover. Safety rests
on the promise never going down and no vote below it, both of which hold either way (the
safety suite checks both).

**Learner** (per instance: the highest round it has seen votes in, a bitmask of the acceptors
that voted in it, the value, and whether the instance is delivered): a 2B of a higher round
resets the instance to that round; a 2B of the same round sets its acceptor's bit (a duplicate
sets it again, which changes nothing); a lower round is ignored. When the votes of one round
reach the quorum, the instance is delivered once, with a DELIVER message; every vote after
that is ignored. Any number of acceptors up to :data:`~hdl.kernels.paxos_format.MAX_ACCEPTORS`.

A message a table cannot take (an instance outside it, a type the role does not handle, round
0, an acceptor id of 8 or more) is a :class:`BadMessage`.
"""

from __future__ import annotations

from hdl.kernels.paxos_format import (
    ACCEPT,
    ACCEPTED,
    DELIVER,
    MAX_ACCEPTORS,
    NACK,
    PREPARE,
    PROMISE,
    TYPE_NAMES,
    VALUE_BYTES,
    Message,
)

__all__ = ["AcceptorModel", "LearnerModel", "BadMessage", "refusal"]


class BadMessage(ValueError):
    """A message the acceptor or learner cannot take; says which and why."""


def refusal(message: Message, takes: tuple[int, ...], instances: int) -> str | None:
    """Why a role that takes messages of the types ``takes`` and has ``instances`` rows cannot
    take ``message``, or None if it can. It depends on the message alone, never on the state,
    so every device names the same message for the same request."""
    if message.type not in takes:
        names = " and ".join(TYPE_NAMES[t].split()[0] for t in takes)
        return (f"{message}: it takes {names} messages, not "
                f"{TYPE_NAMES.get(message.type, f'type {message.type}')}")
    if not 0 <= message.instance < instances:
        return (f"{message}: instance {message.instance} is outside the table of {instances} "
                "instances")
    if message.round == 0:
        return f"{message}: round 0 is no round"
    if not 0 <= message.acceptor < MAX_ACCEPTORS:
        return f"{message}: acceptor ids are 0 to {MAX_ACCEPTORS - 1}"
    return None


def _check(message: Message, takes: tuple[int, ...], instances: int) -> None:
    why = refusal(message, takes, instances)
    if why is not None:
        raise BadMessage(why)


class AcceptorModel:
    """One acceptor's state and rules (see the module doc). An answer carries the acceptor id
    its 1A or 2A was addressed to.

    Parameters
    ----------
    instances : int
        Size of the state table.
    value_bytes : int
        Size of a value.
    """

    def __init__(self, instances: int, value_bytes: int = VALUE_BYTES):
        self.instances = instances
        self.value_bytes = value_bytes
        self.reset()

    def reset(self) -> None:
        """Every instance back to never promised, never voted."""
        self.promised = [0] * self.instances
        self.vround = [0] * self.instances
        self.value = [bytes(self.value_bytes)] * self.instances

    def handle(self, message: Message) -> Message:
        """The answer to one 1A or 2A."""
        _check(message, (PREPARE, ACCEPT), self.instances)
        i, r, me = message.instance, message.round, message.acceptor
        if r < self.promised[i]:
            return Message(NACK, i, self.promised[i], acceptor=me, value=bytes(self.value_bytes))
        self.promised[i] = r
        if message.type == PREPARE:
            return Message(PROMISE, i, r, self.vround[i], self.value[i], me)
        self.vround[i] = r
        self.value[i] = message.value.ljust(self.value_bytes, b"\0")
        return Message(ACCEPTED, i, r, 0, self.value[i], me)


class LearnerModel:
    """A learner's votes and deliveries (see the module doc).

    Parameters
    ----------
    quorum : int
        Votes of one round that decide an instance (a majority of the acceptors).
    instances : int
        Size of the state table.
    value_bytes : int
        Size of a value.
    """

    def __init__(self, quorum: int, instances: int, value_bytes: int = VALUE_BYTES):
        if not 1 <= quorum <= MAX_ACCEPTORS:
            raise ValueError(f"A quorum is 1 to {MAX_ACCEPTORS}, not {quorum!r}")
        self.quorum = quorum
        self.instances = instances
        self.value_bytes = value_bytes
        self.reset()

    def reset(self) -> None:
        self.round = [0] * self.instances
        self.votes = [0] * self.instances
        self.value = [bytes(self.value_bytes)] * self.instances
        self.delivered = [False] * self.instances

    def handle(self, message: Message) -> Message | None:
        """A 2B in: the DELIVER it completes, or None."""
        _check(message, (ACCEPTED,), self.instances)
        i, r = message.instance, message.round
        if self.delivered[i] or r < self.round[i]:
            return None
        if r > self.round[i]:
            self.round[i], self.votes[i] = r, 0
            self.value[i] = message.value.ljust(self.value_bytes, b"\0")
        self.votes[i] |= 1 << message.acceptor
        if self.votes[i].bit_count() < self.quorum:
            return None
        self.delivered[i] = True
        return Message(DELIVER, i, r, 0, self.value[i])
