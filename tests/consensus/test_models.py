"""The message layout, and the acceptor's, learner's and proposer's rules one message at a
time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdl.kernels.paxos_format import (
    ACCEPT,
    ACCEPTED,
    DELIVER,
    HEADER_BYTES,
    NACK,
    PREPARE,
    PROMISE,
    Message,
    message_bytes,
    pack,
    round_of,
    unpack,
    unpack_all,
)
from offload.consensus import AcceptorModel, BadMessage, LearnerModel, Proposer

V = 32


def value(text: str) -> bytes:
    return text.encode().ljust(V, b"\0")


@given(st.sampled_from([PREPARE, PROMISE, ACCEPT, ACCEPTED, NACK, DELIVER]),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.binary(max_size=V), st.integers(0, 255))
def test_pack_and_unpack_are_inverse(kind, instance, round_, vround, data, acceptor):
    m = Message(kind, instance, round_, vround, data.ljust(V, b"\0"), acceptor)
    raw = pack(m)
    assert len(raw) == message_bytes() == HEADER_BYTES + V
    assert unpack(raw) == m
    assert unpack_all(raw * 3) == [m, m, m]


def test_layout_bytes_are_little_endian_at_their_offsets():
    raw = pack(Message(ACCEPT, 0x01020304, 0x0A0B0C0D, 0, b"xy", 0))
    assert raw[0] == ACCEPT and raw[4:8] == bytes([4, 3, 2, 1]) and raw[8:12] == bytes(
        [0x0D, 0x0C, 0x0B, 0x0A]) and raw[16:18] == b"xy"
    with pytest.raises(ValueError, match="at most 32"):
        pack(Message(ACCEPT, 0, 1, 0, bytes(33)))
    with pytest.raises(ValueError, match="whole number"):
        unpack_all(raw[:-1])
    with pytest.raises(ValueError, match="round is 0 to"):
        pack(Message(ACCEPT, 0, 1 << 32))


def test_rounds_are_unique_to_a_proposer_and_grow():
    rounds = {round_of(a, p) for a in range(50) for p in range(1, 256)}
    assert len(rounds) == 50 * 255 and 0 not in rounds
    assert round_of(1, 1) > round_of(0, 255)
    with pytest.raises(ValueError):
        round_of(0, 0)


def test_acceptor_promises_and_votes_by_the_rules():
    a = AcceptorModel(4, V)
    p = a.handle(Message(PREPARE, 1, 5, acceptor=2))
    assert (p.type, p.round, p.vround, p.acceptor) == (PROMISE, 5, 0, 2)
    # The same round again (a retransmission): promised again (>=), nothing changes.
    assert a.handle(Message(PREPARE, 1, 5, acceptor=2)).type == PROMISE
    # Lower: NACK with the promise.
    n = a.handle(Message(PREPARE, 1, 4, acceptor=2))
    assert (n.type, n.round) == (NACK, 5)
    assert a.handle(Message(ACCEPT, 1, 4, 0, value("x"), 2)) == Message(NACK, 1, 5, 0, bytes(V), 2)
    v = a.handle(Message(ACCEPT, 1, 5, 0, value("v"), 2))
    assert (v.type, v.round, v.value) == (ACCEPTED, 5, value("v"))
    # A later prepare sees the vote.
    p = a.handle(Message(PREPARE, 1, 9))
    assert (p.vround, p.value) == (5, value("v"))
    # A 2A above the promise is taken, and promises it.
    assert a.handle(Message(ACCEPT, 2, 7, 0, value("w"))).type == ACCEPTED
    assert a.handle(Message(PREPARE, 2, 6)).type == NACK
    # Other instances are untouched.
    assert a.handle(Message(PREPARE, 3, 1)).vround == 0


@pytest.mark.parametrize("bad, why", [
    (Message(PREPARE, 4, 1), "outside the table"),
    (Message(PROMISE, 0, 1), "takes 1A and 2A messages, not 1B"),
    (Message(PREPARE, 0, 0), "round 0"),
    (Message(PREPARE, 0, 1, acceptor=8), "acceptor ids"),
])
def test_acceptor_refuses_what_it_cannot_take(bad, why):
    with pytest.raises(BadMessage, match=why):
        AcceptorModel(4, V).handle(bad)


@pytest.mark.parametrize("acceptors", [1, 3, 5, 7])
def test_learner_delivers_once_at_a_quorum_of_distinct_acceptors(acceptors):
    quorum = acceptors // 2 + 1
    learner = LearnerModel(quorum, 2, V)
    vote = [Message(ACCEPTED, 1, 3, 0, value("v"), a) for a in range(acceptors)]
    out = []
    for a in range(quorum - 1):
        out += [learner.handle(vote[a]), learner.handle(vote[a])]  # duplicates count once
    assert out == [None] * len(out)
    assert learner.handle(vote[quorum - 1]) == Message(DELIVER, 1, 3, 0, value("v"))
    # Exactly once: more votes, duplicates, higher rounds deliver nothing more.
    assert all(learner.handle(m) is None for m in vote)
    assert learner.handle(Message(ACCEPTED, 1, 9, 0, value("v"), 0)) is None


def test_learner_resets_on_a_higher_round_and_ignores_lower():
    learner = LearnerModel(2, 1, V)
    assert learner.handle(Message(ACCEPTED, 0, 3, 0, value("old"), 0)) is None
    assert learner.handle(Message(ACCEPTED, 0, 5, 0, value("new"), 1)) is None  # resets
    assert learner.handle(Message(ACCEPTED, 0, 3, 0, value("old"), 2)) is None  # lower
    assert learner.handle(Message(ACCEPTED, 0, 5, 0, value("new"), 2)) == Message(
        DELIVER, 0, 5, 0, value("new"))


def test_learner_refuses_what_it_cannot_take():
    learner = LearnerModel(2, 1, V)
    for bad, why in ((Message(PROMISE, 0, 1), "takes 2B messages"),
                     (Message(ACCEPTED, 1, 1), "outside"),
                     (Message(ACCEPTED, 0, 1, acceptor=8), "acceptor ids"),
                     (Message(ACCEPTED, 0, 0), "round 0")):
        with pytest.raises(BadMessage, match=why):
            learner.handle(bad)


def test_proposer_keeps_the_value_of_the_highest_voted_round():
    p = Proposer(1, 3)
    r = p.round
    assert [m.instance for m in p.prepare(range(2))] == [0, 1]
    assert p.receive(Message(PROMISE, 0, r, 0, bytes(V), 0)) is None
    assert p.receive(Message(PROMISE, 0, r, 0, bytes(V), 0)) is None  # the same acceptor
    assert p.receive(Message(PROMISE, 0, r, 2, value("old"), 1)) == 0  # a quorum: prepared
    assert p.accept(0, value("mine")).value == value("old")
    p.receive(Message(PROMISE, 1, r, 0, bytes(V), 0))
    p.receive(Message(PROMISE, 1, r, 0, bytes(V), 2))
    assert p.accept(1, value("mine")).value == value("mine")
    # A NACK above the round: preempted; the next round is above what the NACK named.
    p.receive(Message(NACK, 0, 1000, acceptor=1))
    assert p.preempted
    assert p.new_round() > 1000 and not p.preempted and p.prepared == {}
    # Answers of the old round are ignored.
    assert p.receive(Message(PROMISE, 0, r, 0, bytes(V), 0)) is None
