"""The host's UDP link (issue 11): datagrams of whole frames, several to a datagram, and the same
driver over a link that drops, duplicates and reorders datagrams."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import offload
from hdl.link import protocol as p
from offload import kernels
from offload.link.codec import (
    Frame,
    decode_body,
    frame_body,
    pack_datagrams,
    split_datagram,
)
from offload.link.transport import UdpTransport

from .device_model import DeviceModel
from .udp_model import UdpModelServer

CRC = kernels.get("crc32c")


def crc_model(**kwargs) -> DeviceModel:
    return DeviceModel({CRC.id: ("crc32c", lambda m: CRC.cpu(m).to_bytes(4, "little"))},
                       **kwargs)


frames = st.builds(Frame, st.integers(0, 255), st.integers(0, 255), st.integers(0, p.SEQ_MASK),
                   st.binary(max_size=p.MAX_DATAGRAM - p.HEADER_SIZE - p.CRC_SIZE),
                   st.integers(0, 255))


@given(st.lists(frames, max_size=30))
@settings(max_examples=200, deadline=None)
def test_frames_pack_into_datagrams_and_come_out_the_same(batch):
    bodies = [frame_body(f) for f in batch]
    datagrams = pack_datagrams(bodies)
    assert all(len(d) <= p.MAX_DATAGRAM for d in datagrams)
    # Greedy packing: no two neighbouring datagrams would have fitted in one.
    assert all(len(a) + len(b) > p.MAX_DATAGRAM for a, b in itertools.pairwise(datagrams))
    out = []
    for datagram in datagrams:
        taken, cut = split_datagram(datagram)
        assert not cut
        out += taken
    assert out == bodies and [decode_body(b) for b in out] == batch


@given(st.lists(frames, min_size=1, max_size=6), st.data())
@settings(max_examples=100, deadline=None)
def test_a_datagram_cut_short_gives_the_frames_before_the_cut(batch, data):
    bodies = [frame_body(f) for f in batch]
    datagram = b"".join(bodies)
    cut = data.draw(st.integers(0, len(datagram) - 1))
    taken, partial = split_datagram(datagram[:cut])
    whole = 0
    while whole < len(bodies) and sum(map(len, bodies[:whole + 1])) <= cut:
        whole += 1
    assert taken == bodies[:whole]
    assert partial == (cut != sum(map(len, bodies[:whole])))


def test_calls_over_udp_pack_small_frames_into_datagrams():
    """A message of many small frames (the model takes 16 bytes a frame) goes out a window of
    frames to a datagram, and comes back right."""
    with UdpModelServer(crc_model(max_payload=16)) as server:
        with offload.open(server.url, fallback="never") as device:
            transport = device.backend.transport
            assert isinstance(transport, UdpTransport)
            before = (transport.datagrams_out, server.counts["frames_in"])
            message = random.Random(1).randbytes(16 * 40 + 5)
            assert device.crc32c(message) == CRC.cpu(message)
            sent = transport.datagrams_out - before[0]
            frames_sent = server.counts["frames_in"] - before[1]
            assert frames_sent >= 41 and sent * 4 <= frames_sent
            assert device.backend.manifest.board == "model"


def test_udp_faults_never_give_a_wrong_answer(fault_tally):
    """Datagrams dropped, duplicated and reordered both ways: every call's answer is right or
    an error, never another call's; no frame runs twice (each sequence number at most once)."""
    model = crc_model(max_payload=64)
    rng = random.Random(7)
    messages = [bytes([i]) + rng.randbytes(rng.choice([0, 1, 63, 64, 200, 1000]))
                for i in range(60)]
    with UdpModelServer(model, drop=0.1, duplicate=0.1, reorder=0.1, seed=3) as server:
        with offload.open(server.url, fallback="never", timeout=0.05, retries=20) as device:
            correct = errors = 0
            for message in messages:
                try:
                    result = device.crc32c(message)
                except offload.DeviceError:
                    errors += 1
                    continue
                assert result == CRC.cpu(message), "a wrong answer"
                correct += 1
            link = device.stats()["link"]
    for seqs in model.executed_seqs:
        assert len(seqs) == len(set(seqs)), "a frame ran twice"
    ran = {m for _, m in model.executed}
    assert ran <= set(messages)
    fault_tally.update(correct=correct, errors=errors, wrong=0,
                       dropped=server.counts["dropped"], duplicated=server.counts["duplicated"],
                       reordered=server.counts["reordered"], retries=link.get("retries", 0),
                       resyncs=link.get("resyncs", 0))
    assert correct >= len(messages) - 2  # 20 retries of a 10% loss: errors are rare
    assert server.counts["dropped"] and server.counts["duplicated"] and server.counts["reordered"]


def test_a_udp_device_that_is_not_there_is_a_clear_error():
    with UdpModelServer(crc_model()) as server:
        url = server.url
    with pytest.raises(offload.DeviceError, match="no answer"):
        offload.open(url, fallback="never", timeout=0.05, retries=1)
    with pytest.raises(offload.DeviceError, match="udp://HOST:PORT"):
        offload.open("udp://nowhere", fallback="never")


def test_offload_ping_a_udp_device():
    from click.testing import CliRunner

    from offload.cli import main

    with UdpModelServer(crc_model()) as server:
        result = CliRunner().invoke(main, ["ping", server.url])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert server.url in text and "model" in text and "crc32c" in text
