"""The kernel stream contract, as one formal statement every kernel is proven against.

:class:`StreamContract` wraps a kernel and states, with Amaranth's ``Assume``, ``Assert`` and
``Cover``, what ARCHITECTURE.md asks of every kernel's ports. It knows nothing about a kernel
but its two streams, and of their payloads only that they are ``data.StructLayout`` s with a
``last`` field; every other field (``data``, ``nbytes``, ``error``, an ``op`` to come) is part
of "the payload" as a whole and is never looked at.

What the environment is assumed to do:

* ``rst`` stays low: every flip-flop starts at its initial value, as an FPGA's do after
  configuration.
* The request stream obeys the rules of :mod:`amaranth.lib.stream`: once ``i_stream.valid`` is
  high it stays high, with the same payload, until ``i_stream.ready`` takes the beat. The payload
  is otherwise free: any ``data``, any ``nbytes`` (over the width too, on a last beat or not),
  any ``op``, messages of any length.
* ``o_stream.ready`` is free. Backpressure of any pattern is allowed for every safety assertion;
  the liveness assertions are only claimed while the responses are *fair*: since the start,
  ``o_stream.ready`` has never been low for ``fairness`` cycles in a row.

What the kernel must do (each assertion named as a failed proof reports it):

* ``o_valid_held``, ``o_payload_held``: the response stream obeys the stream rules: once
  ``o_stream.valid`` is high it stays high, with the same payload, until ``o_stream.ready``.
* ``one_response_per_request``: the responses ended (beats with ``last`` taken) never
  outnumber the requests ended. A response beat may come in the very cycle its request's last
  beat is taken, so a combinational kernel satisfies it too.
* ``response_in_time``: while the responses are fair, every response ends (its ``last`` beat is
  taken) within ``latency`` cycles of the later of its request's last beat being taken and the
  previous response ending. Responses come in the order of their requests (a stream has no
  other way to say which is which), so this is checked on the oldest request owed a response,
  with no choice of request to watch; a kernel that never answers, or loses one response, or
  hangs, fails it. Malformed requests are requests like any other, so a kernel that does not
  end the response to one fails here too.
* ``input_in_time``: while the responses are fair, a request beat offered is taken within
  ``latency`` cycles: the kernel never stops taking input for good.

And covers, so that a passing proof is not a vacuous one: ``two_messages`` (two whole
requests answered) and ``multi_beat_message`` (two answered and nothing owed, one request of
several beats among them).

What it does not state: that ``valid`` never waits on ``ready`` (a combinational path, not
something a trace shows; the cocotb tests drive ``ready`` last), what a response holds or how
many beats it has, that ``error`` is raised for malformed input (each kernel's own tests), and
what a reset in the middle of a message does.

The contract is checked over ``depth`` cycles from the initial state (a bounded model check,
see :mod:`sim.formal` for why not induction); its counters are sized to count that far.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from amaranth.hdl import Assert, Assume, Cover, Module, Mux, ResetSignal, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import Flow

__all__ = ["ContractBounds", "StreamContract", "contract_bounds"]

@dataclass(frozen=True)
class ContractBounds:
    """The numbers the contract is stated with.

    A kernel whose responses take longer, or which needs more cycles to show two messages,
    declares a ``contract_bounds`` attribute: a :class:`ContractBounds`, or a mapping of the
    fields it changes (``{"latency": 40, "depth": 48}``).

    Attributes
    ----------
    fairness : int
        ``K``: the responses are fair while ``o_stream.ready`` has not been low for ``K``
        cycles in a row. At least 1 (1 means always ready).
    latency : int
        ``L``: while the responses are fair, a response ends within ``L`` cycles of the later
        of its request's last beat and the previous response's end, and a request beat
        offered is taken within ``L`` cycles.
    depth : int
        Cycles the contract is checked over (the bounded model check's depth). It must leave
        room for a request to be taken and then for ``latency`` cycles, or a kernel that never
        answers would pass: at least ``latency + 4``.
    liveness : bool
        ``False`` checks the safety half only: the depth may then be shorter than
        ``latency + 4``, so the in-time assertions cannot fail within it, and what is proved is
        that the kernel keeps the stream rules and never answers more than it was asked, over
        ``depth`` cycles. For a kernel whose stated latency is too long for a bounded check
        that deep (the wide protobuf engines); its liveness is then shown by simulation only.
    """

    fairness: int = 2
    latency: int = 16
    depth: int = 20
    liveness: bool = True

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "liveness":
                if not isinstance(value, bool):
                    raise ValueError(f"Contract bound liveness must be True or False, not "
                                     f"{value!r}")
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Contract bound {f.name} must be a positive integer, "
                                 f"not {value!r}")
        if self.liveness and self.depth < self.latency + 4:
            raise ValueError(f"Contract depth must be at least latency + 4 = {self.latency + 4} "
                             f"cycles, or a kernel that never answers would pass; not "
                             f"{self.depth!r}")


def contract_bounds(kernel: Any, bounds: ContractBounds | None = None) -> ContractBounds:
    """The bounds ``kernel`` is checked with: ``bounds`` if given, else the kernel's own
    ``contract_bounds`` (a :class:`ContractBounds` or a mapping of changed fields), else the
    defaults."""
    if bounds is not None:
        if not isinstance(bounds, ContractBounds):
            raise TypeError(f"Contract bounds must be a ContractBounds, not {bounds!r}")
        return bounds
    declared = getattr(kernel, "contract_bounds", None)
    if declared is None:
        return ContractBounds()
    if isinstance(declared, ContractBounds):
        return declared
    try:
        changes = dict(declared)
    except (TypeError, ValueError):
        raise TypeError(f"Kernel {type(kernel).__name__}'s contract_bounds must be a "
                        f"ContractBounds or a mapping of its fields, not {declared!r}") from None
    unknown = set(changes) - {f.name for f in fields(ContractBounds)}
    if unknown:
        raise TypeError(f"Kernel {type(kernel).__name__}'s contract_bounds has no field "
                        f"{', '.join(sorted(unknown))}; its fields are fairness, latency, depth, "
                        "liveness")
    # A longer latency alone needs a deeper check to mean anything; make room for it.
    changes.setdefault("depth", max(ContractBounds.depth,
                                    changes.get("latency", ContractBounds.latency) + 4))
    return replace(ContractBounds(), **changes)


def _stream_port(kernel: wiring.Component, name: str, flow: Flow) -> wiring.Member:
    what = f"Kernel {type(kernel).__name__}"
    members = kernel.signature.members
    if name not in members:
        raise TypeError(f"{what} has no {name!r} port; a kernel has i_stream and o_stream")
    member = members[name]
    if (not member.is_port and member.flow == flow
            and isinstance(member.signature, stream.Signature)):
        layout = member.signature.members["payload"].shape
        if not isinstance(layout, data.StructLayout):
            raise TypeError(f"{what}'s {name} payload must be a data.StructLayout, not "
                            f"{layout!r}")
        if "last" not in layout.members:
            raise TypeError(f"{what}'s {name} payload has no 'last' field (it has "
                            f"{', '.join(layout.members)})")
        return member
    raise TypeError(f"{what}'s {name} must be {flow.value}(stream.Signature(...)), not {member!r}")


class StreamContract(wiring.Component):
    """``kernel`` with the kernel stream contract stated around it (see the module
    documentation for what is assumed and what is asserted).

    The contract has the kernel's two stream ports, connected straight through, so that a
    formal tool drives them as free inputs and its traces show them under the kernel's names.

    Parameters
    ----------
    kernel : wiring.Component
        Any component with ``i_stream: In(stream.Signature(layout))`` and
        ``o_stream: Out(stream.Signature(layout))``, both layouts ``data.StructLayout`` s with a
        ``last`` field.
    bounds : ContractBounds, optional
        Overrides the kernel's ``contract_bounds`` and the defaults.

    Members
    -------
    i_stream : ``In(...)``
        The kernel's request stream.
    o_stream : ``Out(...)``
        The kernel's response stream.

    Attributes
    ----------
    kernel : wiring.Component
    bounds : ContractBounds
    """

    #: Names of the assertions, in the order the module documentation gives them.
    ASSERTIONS = ("o_valid_held", "o_payload_held", "one_response_per_request",
                  "response_in_time", "input_in_time")
    #: Names of the covers.
    COVERS = ("two_messages", "multi_beat_message")

    def __init__(self, kernel: wiring.Component, bounds: ContractBounds | None = None):
        self._MustUse__silence = True
        if not isinstance(kernel, wiring.Component):
            raise TypeError(f"Kernel must be an amaranth wiring.Component, not {kernel!r}")
        i_port = _stream_port(kernel, "i_stream", Flow.In)
        o_port = _stream_port(kernel, "o_stream", Flow.Out)
        self.kernel = kernel
        self.bounds = contract_bounds(kernel, bounds)
        self._MustUse__silence = False
        super().__init__({"i_stream": i_port, "o_stream": o_port})

    def elaborate(self, platform):
        m = Module()
        m.submodules.kernel = kernel = self.kernel
        wiring.connect(m, wiring.flipped(self.i_stream), kernel.i_stream)
        wiring.connect(m, kernel.o_stream, wiring.flipped(self.o_stream))

        i, o = self.i_stream, self.o_stream
        fairness, latency = self.bounds.fairness, self.bounds.latency

        m.d.comb += Assume(~ResetSignal(), "env_no_reset")

        # The previous cycle's handshake signals and payloads, for the stream rules.
        i_valid_q, i_ready_q = Signal(), Signal()
        o_valid_q, o_ready_q = Signal(), Signal()
        i_payload_q = Signal.like(i.payload.as_value(), name="i_payload_q")
        o_payload_q = Signal.like(o.payload.as_value(), name="o_payload_q")
        m.d.sync += [
            i_valid_q.eq(i.valid), i_ready_q.eq(i.ready), i_payload_q.eq(i.payload.as_value()),
            o_valid_q.eq(o.valid), o_ready_q.eq(o.ready), o_payload_q.eq(o.payload.as_value()),
        ]

        i_held = i_valid_q & ~i_ready_q
        m.d.comb += [
            Assume(~i_held | i.valid, "env_i_valid_held"),
            Assume(~i_held | (i.payload.as_value() == i_payload_q), "env_i_payload_held"),
        ]
        o_held = o_valid_q & ~o_ready_q
        m.d.comb += [
            Assert(~o_held | o.valid, "o_valid_held"),
            Assert(~o_held | (o.payload.as_value() == o_payload_q), "o_payload_held"),
        ]

        # Fair so far: o_stream.ready has not been low for ``fairness`` cycles in a row.
        low_run = Signal(range(fairness + 1))
        low_run_now = Mux(o.ready, 0, Mux(low_run == fairness, fairness, low_run + 1))
        fair_q = Signal(init=1)
        fair = Signal()
        m.d.comb += fair.eq(fair_q & (low_run_now < fairness))
        m.d.sync += [low_run.eq(low_run_now), fair_q.eq(fair)]

        request_ends = Signal()
        response_ends = Signal()
        m.d.comb += [
            request_ends.eq(i.valid & i.ready & i.payload.last),
            response_ends.eq(o.valid & o.ready & o.payload.last),
        ]

        # Responses owed: requests ended minus responses ended, before this cycle.
        owed = Signal(range(self.bounds.depth + 1))
        m.d.comb += Assert(~response_ends | (owed != 0) | request_ends,
                           "one_response_per_request")

        # Cycles the oldest request owed a response has waited for it: since its last beat was
        # taken, or since the response before it ended if that was later. Responses come in
        # the order of their requests (a stream has no other way to say which is which), so
        # bounding this wait bounds every request's.
        waited = Signal(range(latency + 1))
        owed_next = Signal.like(owed)
        m.d.comb += owed_next.eq(owed + request_ends - response_ends)
        m.d.sync += owed.eq(owed_next)
        with m.If(owed_next == 0):
            m.d.sync += waited.eq(0)
        with m.Elif(response_ends | (owed == 0)):
            m.d.sync += waited.eq(1)
        with m.Elif(waited != latency):
            m.d.sync += waited.eq(waited + 1)
        m.d.comb += Assert(~fair | (owed == 0) | response_ends | (waited < latency),
                           "response_in_time")

        # Cycles a request beat has been offered and not taken, this one included.
        waiting = Signal(range(latency + 1))
        waiting_now = Mux(i.valid & ~i.ready, Mux(waiting == latency, latency, waiting + 1), 0)
        m.d.sync += waiting.eq(waiting_now)
        m.d.comb += Assert(~fair | (waiting_now < latency), "input_in_time")

        # Not vacuous: two whole messages answered, and then one of several beats among them.
        answered = Signal(range(3))
        in_message = Signal()  # a request's first beats are taken, its last is not
        multi_beat = Signal()  # a request of several beats has ended
        with m.If(response_ends & (answered != 2)):
            m.d.sync += answered.eq(answered + 1)
        with m.If(i.valid & i.ready):
            m.d.sync += in_message.eq(~i.payload.last)
        with m.If(request_ends & in_message):
            m.d.sync += multi_beat.eq(1)
        m.d.comb += [
            Cover(answered == 2, "two_messages"),
            Cover((answered == 2) & multi_beat & (owed == 0), "multi_beat_message"),
        ]
        return m
