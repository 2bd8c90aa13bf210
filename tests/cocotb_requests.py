"""cocotb testbench of any kernel from a document of requests and its CPU model's answers,
under Verilator.

Run through :func:`sim.cocotb_runner.run_cocotb` by a kernel's tests (the protobuf kernel's in
``tests/kernels/test_protobuf_verilator.py``, the Paxos roles' in
``tests/consensus/test_gateware.py``), which make the requests and the CPU model's answers and
hand them over in the JSON file named by ``$OFFLOAD_REQUESTS``: ``width`` (the kernel's beat),
``runs``, a list of requests for each idle/backpressure run below, and ``mutations``. Each
request is a dict: ``op`` (the opcode), ``data`` (hex), ``tail`` (end it with an empty last
beat after the data), ``want`` (hex) and ``error`` (the model's answer), ``what`` (for
messages). Every test starts from a reset, so a stateful kernel's answers in a run are the
model's from a fresh state through that run's requests. This side only drives the requests and
compares every response with the model's, byte for byte and ``error`` flag; so it knows
nothing of any kernel.

The stream models, the stream-rule check and the idle and backpressure patterns are the shared
ones of ``tests/cocotb_streams.py``, with one more here, :func:`heavy`.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Iterator

import cocotb
from cocotb.triggers import ClockCycles

from hdl.stream import byte_layout, request_layout
from tests.cocotb_streams import TB, bursty, random_50

SEED = int(os.environ.get("OFFLOAD_SEED", "1"))
CLOCK_NS = 10

#: Mismatches quoted in a failure (all are counted).
QUOTED = 3


def heavy(seed: int = 0) -> Iterator[bool]:
    """Pause in 85% of the cycles, at random."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < 0.85


#: (idle inserter, backpressure inserter) of each run: none, the shared patterns, heavy ones,
#: and mixes; one list of requests each.
PAIRS = [
    (None, None), (random_50, random_50), (bursty, bursty), (None, heavy), (heavy, None),
    (random_50, bursty), (bursty, heavy), (heavy, random_50),
]


@functools.cache
def document() -> dict:
    with open(os.environ["OFFLOAD_REQUESTS"]) as f:
        return json.load(f)


class RequestsTB(TB):
    """The shared testbench shape, on the kernel's request and byte streams (of the width the
    requests' document names)."""

    def __init__(self, dut):
        self.width = document().get("width", 1)
        super().__init__(dut, request_layout(self.width), byte_layout(self.width),
                         period_ns=CLOCK_NS, seed=SEED)

    def send(self, request: dict) -> None:
        """Queue a request's beats: full beats, the last with ``last``; or, for a ``tail``
        request, every data beat without ``last`` (the last of them may be partly filled) and
        then an empty beat with it."""
        data, op, w = bytes.fromhex(request["data"]), request["op"], self.width
        if request["tail"]:
            for at in range(0, len(data), w):
                chunk = data[at:at + w]
                self.source.send_beat(data=int.from_bytes(chunk, "little"), nbytes=len(chunk),
                                      last=0, op=op)
            self.source.send_beat(data=0, nbytes=0, last=1, op=op)
        else:
            self.source.send(data, op=op)

    async def run(self, requests: list[dict]) -> None:
        """Send every request, then wait for one response each and compare them with the
        model's answers, failing with the first few that differ."""
        for request in requests:
            self.send(request)
        sizes = sum(len(r["data"]) + len(r["want"]) for r in requests) // 2
        # Generous for the heaviest pattern: 85% pauses on every beat, in and out, and the
        # encoder's walk of a record's fields.
        await self.sink.wait_for(len(requests), 60 * sizes + 3000 * len(requests) + 10_000)
        await ClockCycles(self.clock, 200)
        assert len(self.sink.messages) == len(requests), (
            f"{len(self.sink.messages)} responses to {len(requests)} requests")
        wrong = []
        for number, (request, response) in enumerate(
                zip(requests, self.sink.messages, strict=True)):
            want = bytes.fromhex(request["want"])
            if (response.data, response.error) != (want, request["error"]):
                wrong.append({"number": number, **request, "got": response.data.hex(),
                              "got_error": response.error})
        if wrong:
            # The whole of each, for minimising; the failure quotes the start of a few.
            path = os.path.abspath(f"mismatches-{self.dut._name}-{self.cycle()}.json")
            with open(path, "w") as f:
                json.dump(wrong, f, indent=1)
        assert not wrong, (
            f"{len(wrong)} of {len(requests)} responses differ from the model's (all in "
            f"{path}):\n" + "\n".join(_difference(w) for w in wrong[:QUOTED]))


def _difference(w: dict) -> str:
    got, want = bytes.fromhex(w["got"]), bytes.fromhex(w["want"])
    pairs = enumerate(zip(got, want, strict=False))
    at = next((k for k, (a, b) in pairs if a != b), min(len(got), len(want)))
    return (f"request {w['number']} ({w['what']}; op {w['op']}): answered {len(got)} bytes "
            f"error={w['got_error']}, the model {len(want)} bytes error={w['error']}, first "
            f"differing at byte {at}; request {w['data'][:160]}")


@cocotb.test()
@cocotb.parametrize((("idle_inserter", "backpressure_inserter"), PAIRS))
async def run_test(dut, idle_inserter, backpressure_inserter):
    """Good requests of both operations, interleaved with malformed ones, unknown opcodes,
    empty requests and requests ending with an empty beat, under one idle/backpressure
    pattern each."""
    tb = RequestsTB(dut)
    tb.set_idle_generator(idle_inserter)
    tb.set_backpressure_generator(backpressure_inserter)
    await tb.reset()
    await tb.run(document()["runs"][PAIRS.index((idle_inserter, backpressure_inserter))])


@cocotb.test()
async def mutations(dut):
    """Random byte mutations of good decode requests, each answered as the model does."""
    tb = RequestsTB(dut)
    tb.set_idle_generator(bursty)
    tb.set_backpressure_generator(random_50)
    await tb.reset()
    await tb.run(document()["mutations"])
