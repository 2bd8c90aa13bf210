"""The Paxos acceptor and learner kernels: ``paxos_acceptor`` and ``paxos_learner``.

Each has one operation, ``handle``: a batch of messages (:class:`~hdl.kernels.paxos_format.
Message`, or one alone) is one streamed request; the answer is a list of messages (one alone
for one alone). The acceptor answers every 1A and 2A (a 1B, a 2B or a NACK); the learner takes
2B messages and answers with a DELIVER for each that completes a quorum, so its list may be
shorter than the batch, or empty. The rules are :mod:`offload.consensus.models`', the gateware
:mod:`hdl.kernels.paxos`.

Both keep state on the device (``stateful``): their calls never fall back to the CPU and are
never run twice, and ``device.reset(name)`` clears every instance. A message the role cannot
take (:func:`~offload.consensus.models.refusal`: another type, an instance outside the table,
round 0, an acceptor id of 8 or more) is a :class:`~offload.KernelError` naming it; the
messages before it have taken effect, those after it have not.

Values are 32 bytes (:data:`~hdl.kernels.paxos_format.VALUE_BYTES`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from hdl.kernels.paxos_format import (
    ACCEPT,
    ACCEPTED,
    PREPARE,
    VALUE_BYTES,
    Message,
    message_bytes,
    pack,
    unpack,
    unpack_all,
)
from hdl.link import protocol as p

from ..consensus.models import AcceptorModel, BadMessage, LearnerModel, refusal
from ..errors import OffloadError
from . import KernelSpec, Operation, Param, Response

__all__ = ["ACCEPTOR", "LEARNER"]

SIZE = message_bytes(VALUE_BYTES)
#: Answer bytes the gateware may hold from one frame into the next: the answer going out, the
#: one being decided, and a message begun but not whole.
HOLDBACK = 2 * SIZE + SIZE - 1


class _Model:
    """The CPU path of a role: its model over a batch, answering as the gateware does."""

    def __init__(self, model):
        self.model = model

    def reset(self) -> None:
        self.model.reset()

    def run(self, op: str, request: bytes) -> Response:
        if op != "handle":
            return Response(b"", error=True)
        out = bytearray()
        whole = len(request) - len(request) % SIZE
        for k in range(0, whole, SIZE):
            try:
                answer = self.model.handle(unpack(request[k:k + SIZE]))
            except BadMessage:
                return Response(bytes(out), error=True)
            if answer is not None:
                out += pack(answer)
        return Response(bytes(out), error=whole != len(request))


def acceptor_model(params: Mapping[str, int]) -> _Model:
    return _Model(AcceptorModel(int(params["instances"])))


def learner_model(params: Mapping[str, int]) -> _Model:
    return _Model(LearnerModel(int(params["quorum"]), int(params["instances"])))


def _messages(messages) -> list[Message]:
    batch = [messages] if isinstance(messages, Message) else messages
    if not isinstance(batch, (list, tuple)) or not all(isinstance(m, Message) for m in batch):
        raise TypeError("handle takes a Message or a list of them "
                        "(hdl.kernels.paxos_format.Message)")
    return list(batch)


def encode(params, messages) -> list[bytes]:
    """One request: the batch's messages packed (values up to 32 bytes, zero-padded)."""
    return [b"".join(pack(m) for m in _messages(messages))]


def decode(params, responses, messages):
    answers = unpack_all(responses[0])
    return answers[0] if isinstance(messages, Message) and answers else \
        (None if isinstance(messages, Message) else answers)


def _error(takes: tuple[int, ...]):
    def error(params, response: Response, messages) -> str:
        for number, message in enumerate(_messages(messages)):
            why = refusal(message, takes, int(params["instances"]))
            if why is not None:
                return f"message {number}: {why}"
        return "the request was refused"
    return error


def _operation(takes: tuple[int, ...], doc: str) -> Operation:
    return Operation("handle", encode, decode, max_response=lambda params, n: n,
                     error=_error(takes), expansion=1.0, holdback=HOLDBACK, doc=doc)


def _random_message(rng: random.Random, kinds, instances: int, acceptors: int) -> Message:
    return Message(rng.choice(kinds), rng.randrange(instances), rng.choice([1, 2, 3, 257, 258]),
                   0, rng.randbytes(rng.randrange(VALUE_BYTES + 1)), rng.randrange(acceptors))


def _workload(kinds, acceptors: int):
    def workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
        count = max(1, size // SIZE)
        instances = int(params["instances"])
        return "handle", ([_random_message(rng, kinds, instances, acceptors)
                           for _ in range(count)],)
    return workload


def _strategies(kinds):
    def strategies(params) -> dict:
        from hypothesis import strategies as st

        instances = int(params["instances"])
        # Mostly messages the role takes, over a few instances and rounds (so that promises,
        # votes, NACKs and deliveries all come); now and then one it refuses.
        good = st.builds(Message, st.sampled_from(kinds), st.integers(0, min(instances, 4) - 1),
                         st.sampled_from([1, 2, 3, 257, 258]), st.just(0),
                         st.binary(max_size=VALUE_BYTES), st.integers(0, 4))
        bad = st.builds(Message, st.integers(0, 7), st.integers(0, instances + 2),
                        st.integers(0, 3), st.just(0), st.binary(max_size=VALUE_BYTES),
                        st.integers(0, 9))
        message = st.one_of(good, good, good, good, bad)
        return {"handle": st.one_of(good.map(lambda m: (m,)),
                                    st.lists(message, max_size=24).map(lambda b: (b,)))}
    return strategies


def bench(params, op: str, args: tuple) -> dict:
    """The bench's rates per message: the workload's batch is its messages."""
    (messages,) = args
    return {"items": len(messages), "unit": "messages", "rows": []}


#: P4xos on a Tofino switch ASIC (Dang et al., "P4xos: Consensus as a Network Service",
#: IEEE/ACM Transactions on Networking, 2020): the anchor for what a switch pipeline does.
P4XOS_MSGS_PER_S = 2.5e9

_APPENDS = 200


def _append_latency(acceptors, learner=None) -> tuple[float, float]:
    """Median and 95th percentile seconds of ``ReplicatedLog.append`` by one proposer."""
    import time

    from ..consensus import ReplicatedLog

    with ReplicatedLog(acceptors, learner, fresh=True) as log:
        took = []
        for k in range(min(_APPENDS, log.instances)):
            start = time.perf_counter()
            log.append(f"bench {k}".encode())
            took.append(time.perf_counter() - start)
    took.sort()
    return took[len(took) // 2], took[int(0.95 * len(took))]


def acceptor_bench(params, op: str, args: tuple) -> dict:
    """Beyond the rates per message: the CPU model's messages/s, the decision latency of a
    replicated log (measured on CPU acceptors and on three virtual boards, derived for three
    real boards from their links), and P4xos's rate as the ASIC anchor."""
    import offload
    from boards import BOARDS, ETH_BOARDS

    from ..bench import CITED, DERIVED, time_call
    from ..link.codec import wire_size

    (messages,) = args
    model = AcceptorModel(int(params["instances"]))
    seconds = time_call(lambda: [model.handle(m) for m in messages])
    rows = [("CPU model (AcceptorModel.handle)", len(messages) / seconds, "messages/s",
             f"{len(messages)} 1A/2A messages, best of 5 timed batches")]
    log_params = {"paxos_acceptor": {"instances": 256}}
    cpu = [offload.open("cpu", params=log_params) for _ in range(3)]
    host, host95 = _append_latency(cpu)
    rows.append(("ReplicatedLog.append on 3 CPU acceptors", host * 1e3, "ms",
                 f"median of {_APPENDS} appends by one proposer (95th percentile "
                 f"{host95 * 1e3:.3f} ms): the host's own time, Python and threads"))
    # The host's time on a real board: the virtual boards' (the driver, framing and threads, and
    # the simulation and socket, which a board replaces with its UART), else the CPU's.
    base, base_note = host, "the host's time on CPU acceptors"
    try:
        boards = [offload.open("sim:icebreaker", fallback="never", kernels=["paxos_acceptor"])
                  for _ in range(3)]
    except OffloadError as exc:
        rows.append(("ReplicatedLog.append on 3 virtual boards", float("nan"), "ms",
                     f"not measured: {exc}"))
    else:
        try:
            board, board95 = _append_latency(boards)
        finally:
            for device in boards:
                device.close()
        rows.append(("ReplicatedLog.append on 3 virtual boards", board * 1e3, "ms",
                     f"median of up to {_APPENDS} appends by one proposer (95th percentile "
                     f"{board95 * 1e3:.3f} ms), 3 virtual iCEBreakers (Verilator processes "
                     "behind TCP sockets, no UART timing), learner on the CPU"))
        base, base_note = board, "the virtual boards' time (an upper bound of the host's)"
    # On real boards an append in a prepared round is one exchange with every acceptor at
    # once (a 2A out, a 2B back, each on its own link) and the learner on the CPU.
    wire = wire_size(SIZE) + wire_size(SIZE)
    for name, spec in sorted(BOARDS.items()):
        link = wire * 10 / spec.link_baud
        rows.append((f"ReplicatedLog.append on 3 {name} boards", (link + base) * 1e3, "ms",
                     f"{wire} wire bytes (2A and 2B, framed) at {spec.link_baud:,} baud = "
                     f"{link * 1e3:.3f} ms on each board's link at once, + {base_note}, "
                     f"{base * 1e3:.3f} ms, measured above", DERIVED))
    # On Gigabit Ethernet each is one datagram (the frame, UDP, IPv4, Ethernet, preamble, gap).
    line = max(64, SIZE + p.HEADER_SIZE + p.CRC_SIZE + 46) + 20
    for name in sorted(ETH_BOARDS):
        link = 2 * line * 8 / 1e9
        rows.append((f"ReplicatedLog.append on 3 {name} boards", (link + base) * 1e3, "ms",
                     f"2 x {line} bytes on the line (a 2A and a 2B, one datagram each) at "
                     f"1 Gb/s = {link * 1e6:.2f} us on each board's link at once, + "
                     f"{base_note}, {base * 1e3:.3f} ms, measured above", DERIVED))
    rows.append(("P4xos acceptor on a Tofino switch ASIC", P4XOS_MSGS_PER_S, "messages/s",
                 "Dang et al., P4xos: Consensus as a Network Service, IEEE/ACM ToN 2020 "
                 "(the anchor: a switch pipeline at line rate)", CITED))
    return {"items": len(messages), "unit": "messages", "rows": rows}


_WIDTH = Param(8, "bytes per beat (1: the narrow role, a byte a beat and the table in SPRAM on "
                  "the iCE40 UltraPlus)", choices=(1, 2, 4, 8))

ACCEPTOR = KernelSpec(
    name="paxos_acceptor", id=4, version=1,
    summary="a Paxos acceptor: 1A/2A messages in, 1B/2B/NACK out, state per instance",
    gateware="hdl.kernels.paxos:acceptor",
    model=acceptor_model,
    operations=(_operation((PREPARE, ACCEPT), "1A and 2A messages to their answers"),),
    params={"instances": Param(256, "log positions (rows of promised round, voted round and "
                                    "value)", low=1, high=4096),
            "width": _WIDTH},
    # The iCE40 UP5K: the narrow role, its table in two of the four SPRAM cells, so that an
    # acceptor and a learner fit one device beside the link. The ULX3S: 9 of its 208 EBRs a
    # 512 rows.
    board_params={"icebreaker": {"instances": 1024, "width": 1},
                  "ulx3s-85f": {"instances": 4096}},
    # The table is cleared a row a cycle after a reset: two rows run the same logic.
    proof_params={"instances": 2},
    stateful=True,
    default=False,  # a consensus device is built as one: named, with its own sizes
    workload=_workload((PREPARE, ACCEPT), 3), strategies=_strategies((PREPARE, ACCEPT)),
    bench=acceptor_bench,
)

LEARNER = KernelSpec(
    name="paxos_learner", id=5, version=1,
    summary="a Paxos learner: 2B messages in, a DELIVER for each instance decided",
    gateware="hdl.kernels.paxos:learner",
    model=learner_model,
    operations=(_operation((ACCEPTED,), "2B messages to the deliveries they complete"),),
    params={"instances": Param(256, "log positions", low=1, high=4096),
            "quorum": Param(2, "votes of one round that decide (a majority of the acceptors)",
                            low=1, high=8),
            "width": _WIDTH},
    # The iCE40 UP5K: the narrow role, its table in two of the four SPRAM cells, so that an
    # acceptor and a learner fit one device beside the link. The ULX3S: 9 of its 208 EBRs a
    # 512 rows.
    board_params={"icebreaker": {"instances": 1024, "width": 1},
                  "ulx3s-85f": {"instances": 4096}},
    proof_params={"instances": 2},
    stateful=True,
    default=False,
    workload=_workload((ACCEPTED,), 3), strategies=_strategies((ACCEPTED,)),
    bench=bench,
)
