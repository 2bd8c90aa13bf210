"""Stream models for the cocotb testbenches of kernels under Verilator.

Every kernel testbench has the same shape, after Forencich's cocotbext-axi testbenches: a ``TB``
class (a subclass of :class:`TB` here) that starts the clock, makes a :class:`StreamSource` on
the kernel's ``i_stream`` and a :class:`StreamSink` on its ``o_stream`` and has ``reset()``; then
``async def run_test(dut, idle_inserter, backpressure_inserter)``, run over the matrix of
:data:`PATTERNS`. Nothing here knows a kernel: a port's payload is packed and unpacked by the
field offsets of its ``data.StructLayout``, so a request layout with more fields than the byte
stream's (an ``op``, say) needs no change here.

Verilator flattens an ``amaranth.lib.stream`` port ``p`` into ``p__valid``, ``p__ready`` and
``p__payload``, the payload one packed vector whose bit ``layout[field].offset`` is the field's
lowest bit.

The models sample the handshake in the read-only phase of the cycle, before the clock edge that
completes it, rather than at the edge itself: with Verilator, cocotb's edge callbacks see the
registers already updated by that edge.

Only testbenches import this module (it imports cocotb); library code never does.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import cocotb
from amaranth.lib import data, wiring
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import (
    ClockCycles,
    Event,
    ReadOnly,
    RisingEdge,
    SimTimeoutError,
    with_timeout,
)

__all__ = [
    "PATTERNS", "Pattern", "StreamMessage", "StreamPort", "StreamSink", "StreamSource", "TB",
    "bursty", "check_stream_rules", "payload_layout", "random_50",
]

# Fields of the byte-stream convention (hdl/stream.py); any other field is the kernel's own.
_MESSAGE_FIELDS = ("data", "nbytes", "last", "error")


# -- idle and backpressure patterns --------------------------------------------------------------

#: A pattern: given a seed, an endless run of booleans, one per cycle, True where the model
#: pauses (a source offers no new beat; a sink is not ready).
Pattern = Callable[[int], Iterator[bool]]


def random_50(seed: int = 0) -> Iterator[bool]:
    """Pause in half the cycles, at random."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < 0.5


def bursty(seed: int = 0) -> Iterator[bool]:
    """Runs of 1 to 32 cycles of flow, then 1 to 12 paused."""
    rng = random.Random(seed)
    while True:
        yield from itertools.repeat(False, rng.randint(1, 32))
        yield from itertools.repeat(True, rng.randint(1, 12))


#: The patterns every kernel's ``run_test`` is run under, as idle inserter and as backpressure
#: inserter (``None``: never pause).
PATTERNS: list[Pattern | None] = [None, random_50, bursty]


def _pauses(pattern: Pattern | None, seed: int) -> Iterator[bool]:
    return itertools.repeat(False) if pattern is None else pattern(seed)


# -- ports and payloads --------------------------------------------------------------------------

def _cycle(period_ns: int) -> int:
    return int(get_sim_time("ns")) // period_ns


def payload_layout(component: wiring.Component, port: str) -> data.StructLayout:
    """The payload layout of ``component``'s stream port ``port``, from its signature.

    The component is only read, never simulated here (the design under test is the Verilog
    Verilator built), so Amaranth is told not to warn that it was never elaborated.
    """
    component._MustUse__silence = True
    try:
        return component.signature.members[port].signature.members["payload"].shape
    except (KeyError, AttributeError):
        raise ValueError(f"{component!r} has no stream port {port!r} with a payload") from None


class StreamPort:
    """The three signals of a flattened stream port ``<name>__{valid,ready,payload}``."""

    def __init__(self, dut, name: str):
        try:
            self.valid = getattr(dut, f"{name}__valid")
            self.ready = getattr(dut, f"{name}__ready")
            self.payload = getattr(dut, f"{name}__payload")
        except AttributeError:
            raise ValueError(
                f"the design has no stream port {name!r} (no {name}__valid, {name}__ready and "
                f"{name}__payload)"
            ) from None
        self.name = name


class _Packing:
    """Packs and unpacks a payload by its ``data.StructLayout``'s field offsets."""

    def __init__(self, layout: data.StructLayout, port: str):
        if not isinstance(layout, data.StructLayout):
            raise TypeError(f"The layout of stream {port!r} must be a data.StructLayout, "
                            f"not {layout!r}")
        self.fields = {name: (fld.offset, fld.width) for name, fld in layout}
        self.port = port
        if "data" not in self.fields or "last" not in self.fields:
            raise ValueError(f"The layout of stream {port!r} must have 'data' and 'last' "
                             f"fields to carry messages; it has {sorted(self.fields)}")
        data_bits = self.fields["data"][1]
        if data_bits % 8:
            raise ValueError(f"The 'data' field of stream {port!r} must be whole bytes, "
                             f"not {data_bits} bits")
        #: Bytes per beat.
        self.width = data_bits // 8
        #: The kernel's own fields: those beyond the byte stream's.
        self.extra = tuple(name for name in self.fields if name not in _MESSAGE_FIELDS)

    def pack(self, values: Mapping[str, int]) -> int:
        word = 0
        for name, value in values.items():
            if name not in self.fields:
                raise ValueError(f"stream {self.port!r} has no field {name!r}; its fields are "
                                 f"{sorted(self.fields)}")
            offset, width = self.fields[name]
            value = int(value)
            if not -(1 << (width - 1)) <= value < (1 << width):
                raise ValueError(f"{value} does not fit the {width}-bit field {name!r} of "
                                 f"stream {self.port!r}")
            word |= (value & ((1 << width) - 1)) << offset
        return word

    def get(self, word: int, name: str) -> int:
        offset, width = self.fields[name]
        return (word >> offset) & ((1 << width) - 1)


# -- source and sink -----------------------------------------------------------------------------

class StreamSource:
    """Drives whole messages into a stream port, beat by beat.

    ``valid`` never waits on ``ready``, and a beat, once offered, stays unchanged until taken;
    the idle pattern only delays the offer of the next beat. The model runs from its creation.

    Parameters
    ----------
    dut :
        The design (cocotb's ``dut``).
    name : str
        The port, for example ``"i_stream"``.
    layout : data.StructLayout
        The port's payload layout, with at least ``data`` (whole bytes) and ``last``; with
        ``nbytes``, the last beat of a message may be partly filled.
    clock :
        The clock signal.
    period_ns : int
        The clock's period, to number cycles.

    Members
    -------
    width : int
        Bytes per beat.
    accepted : list of int
        The cycle of each beat's handshake, in order.
    """

    def __init__(self, dut, name: str, layout: data.StructLayout, clock, *, period_ns: int):
        self.port = StreamPort(dut, name)
        self.packing = _Packing(layout, name)
        self.width = self.packing.width
        self.clock = clock
        self.period_ns = period_ns
        self.queue: deque[int] = deque()
        self.pause: Iterator[bool] = itertools.repeat(False)
        self.accepted: list[int] = []
        self._idle = Event()
        self._idle.set()
        self.port.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_pause_generator(self, pauses: Iterator[bool] | None = None) -> None:
        """Pause (offer no new beat) in each cycle where ``pauses`` yields True."""
        self.pause = itertools.repeat(False) if pauses is None else iter(pauses)

    def send(self, message: bytes, **fields: int) -> None:
        """Queue a well-formed message: full beats, then a last beat of 0 to ``width`` bytes.

        ``fields`` are values of the kernel's own payload fields (``op=3``), set on every beat
        of the message.
        """
        w = self.width
        chunks = [message[i:i + w] for i in range(0, len(message), w)] or [b""]
        has_nbytes = "nbytes" in self.packing.fields
        if not has_nbytes and len(chunks[-1]) != w:
            raise ValueError(f"stream {self.port.name!r} has no 'nbytes' field, so a message "
                             f"must be a whole number of {w}-byte beats, not {len(message)} "
                             "bytes")
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            beat = dict(fields, data=int.from_bytes(chunk, "little"), last=last)
            if has_nbytes:
                beat["nbytes"] = len(chunk) if last else w
            self.send_beat(**beat)

    def send_beat(self, **fields: int) -> None:
        """Queue one beat given field by field (others are 0), for malformed input."""
        self.queue.append(self.packing.pack(fields))
        self._idle.clear()

    def idle(self) -> bool:
        """Whether every queued beat has been taken."""
        return self._idle.is_set()

    async def wait(self) -> None:
        """Wait until every queued beat has been taken."""
        await self._idle.wait()

    async def _run(self) -> None:
        edge, settled = RisingEdge(self.clock), ReadOnly()
        valid, ready, payload = self.port.valid, self.port.ready, self.port.payload
        offered = False  # a beat is offered and not yet taken
        fired = False
        while True:
            await edge
            if fired:
                offered = False
                if not self.queue:
                    self._idle.set()
            pause = next(self.pause)
            if not offered:
                if self.queue and not pause:
                    payload.value = self.queue.popleft()
                    valid.value = 1
                    offered = True
                else:
                    valid.value = 0
            await settled
            fired = offered and bool(ready.value)
            if fired:
                self.accepted.append(_cycle(self.period_ns))


@dataclass(frozen=True)
class StreamMessage:
    """A message a :class:`StreamSink` received.

    Members
    -------
    data : bytes
    error : bool
        Whether any of its beats had ``error`` set.
    start, end : int
        Cycles of its first and last beats' handshakes.
    fields : dict of str to int
        The kernel's own payload fields (those beyond the byte stream's) on its last beat.
    """

    data: bytes
    error: bool
    start: int
    end: int
    fields: dict[str, int] = field(default_factory=dict)


class StreamSink:
    """Takes messages from a stream port, ``ready`` following the backpressure pattern.

    Parameters are those of :class:`StreamSource`. The model runs from its creation.

    Members
    -------
    messages : list of StreamMessage
        Every message received, in order.
    """

    def __init__(self, dut, name: str, layout: data.StructLayout, clock, *, period_ns: int):
        self.port = StreamPort(dut, name)
        self.packing = _Packing(layout, name)
        self.width = self.packing.width
        self.clock = clock
        self.period_ns = period_ns
        self.pause: Iterator[bool] = itertools.repeat(False)
        self.messages: list[StreamMessage] = []
        self._taken = 0  # messages handed out by recv()
        self._wanted = 0
        self._received = Event()
        self.port.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_pause_generator(self, pauses: Iterator[bool] | None = None) -> None:
        """Not ready in each cycle where ``pauses`` yields True."""
        self.pause = itertools.repeat(False) if pauses is None else iter(pauses)

    async def wait_for(self, count: int, timeout_cycles: int) -> None:
        """Wait until ``count`` messages have come, failing after ``timeout_cycles``."""
        if len(self.messages) >= count:
            return
        self._wanted = count
        self._received.clear()
        try:
            await with_timeout(self._received.wait(), timeout_cycles * self.period_ns, "ns")
        except SimTimeoutError:
            raise AssertionError(
                f"only {len(self.messages)} of {count} messages on {self.port.name} after "
                f"{timeout_cycles} cycles"
            ) from None

    async def recv(self, timeout_cycles: int) -> StreamMessage:
        """The next message not yet returned by ``recv``, waiting up to ``timeout_cycles``."""
        await self.wait_for(self._taken + 1, timeout_cycles)
        self._taken += 1
        return self.messages[self._taken - 1]

    async def _run(self) -> None:
        edge, settled = RisingEdge(self.clock), ReadOnly()
        valid, ready, payload = self.port.valid, self.port.ready, self.port.payload
        get, w = self.packing.get, self.width
        has_nbytes = "nbytes" in self.packing.fields
        has_error = "error" in self.packing.fields
        body = bytearray()
        error = False
        first = 0
        while True:
            await edge
            taking = not next(self.pause)
            ready.value = int(taking)
            await settled
            if not (taking and valid.value):
                continue
            cycle = _cycle(self.period_ns)
            word = int(payload.value)
            last = bool(get(word, "last"))
            if not body:
                first = cycle
            nbytes = min(get(word, "nbytes"), w) if last and has_nbytes else w
            body += get(word, "data").to_bytes(w, "little")[:nbytes]
            error |= has_error and bool(get(word, "error"))
            if last:
                own = {name: get(word, name) for name in self.packing.extra}
                self.messages.append(StreamMessage(bytes(body), error, first, cycle, own))
                body, error = bytearray(), False
                if len(self.messages) >= self._wanted:
                    self._received.set()


# -- the stream rules ----------------------------------------------------------------------------

async def check_stream_rules(clock, ports: Iterable[StreamPort], *, period_ns: int,
                             reset=None) -> None:
    """Fail the test at the first break of the stream rules on any of ``ports``.

    A beat offered (``valid``) and not taken (not ``ready``) must be offered again in the next
    cycle with the same payload. ``ports`` is read every cycle, so a port added to it later is
    checked from then on. Cycles in which ``reset`` is high are exempt.
    """
    edge, settled = RisingEdge(clock), ReadOnly()
    held: dict[str, object] = {}  # port -> the payload it offered and did not hand over
    while True:
        await edge
        await settled
        if reset is not None and reset.value:
            held.clear()
            continue
        for port in ports:
            # Reading a signal costs more than the rest of the loop: the payload is read only
            # where a beat is held back, or was held back in the cycle before.
            valid = bool(port.valid.value)
            before = held.pop(port.name, None)
            if before is not None:
                cycle = _cycle(period_ns)
                assert valid, (
                    f"{port.name}: valid dropped in cycle {cycle} while a beat was offered and "
                    "not taken"
                )
                payload = port.payload.value
                assert payload == before, (
                    f"{port.name}: payload changed in cycle {cycle} while offered and not "
                    f"taken, from {before} to {payload}"
                )
            if valid and not port.ready.value:
                held[port.name] = port.payload.value


# -- the testbench's shape -----------------------------------------------------------------------

class TB:
    """Clock, reset, and the stream models around a kernel; each kernel's testbench subclasses
    it (or uses it as it is).

    Parameters
    ----------
    dut :
        The design (cocotb's ``dut``).
    in_layout : data.StructLayout
        Payload layout of the request port ``source``.
    out_layout : data.StructLayout, optional
        Payload layout of the response port ``sink``; by default ``in_layout``.
    source, sink : str
        The ports the :class:`StreamSource` and the :class:`StreamSink` attach to.
    clock, reset : str
        The clock and (active-high, synchronous) reset signals.
    period_ns : int
        The clock's period.
    seed : int
        Seeds the idle and backpressure patterns (each with its own stream).

    Members
    -------
    source : StreamSource
    sink : StreamSink
    ports : list of StreamPort
        The ports whose stream rules are checked every cycle: those of every model added with
        :meth:`add_source` and :meth:`add_sink`.
    """

    def __init__(self, dut, in_layout: data.StructLayout,
                 out_layout: data.StructLayout | None = None, *, source: str = "i_stream",
                 sink: str = "o_stream", clock: str = "clk", reset: str = "rst",
                 period_ns: int = 10, seed: int = 0):
        self.dut = dut
        self.clock = getattr(dut, clock)
        self.rst = getattr(dut, reset)
        self.period_ns = period_ns
        self.seed = seed
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)
        Clock(self.clock, period_ns, unit="ns").start()
        self.ports: list[StreamPort] = []
        self.source = self.add_source(source, in_layout)
        self.sink = self.add_sink(sink, in_layout if out_layout is None else out_layout)
        cocotb.start_soon(check_stream_rules(self.clock, self.ports, period_ns=period_ns,
                                             reset=self.rst))

    def add_source(self, name: str, layout: data.StructLayout) -> StreamSource:
        """A :class:`StreamSource` on port ``name``, its stream rules checked."""
        model = StreamSource(self.dut, name, layout, self.clock, period_ns=self.period_ns)
        self.ports.append(model.port)
        return model

    def add_sink(self, name: str, layout: data.StructLayout) -> StreamSink:
        """A :class:`StreamSink` on port ``name``, its stream rules checked."""
        model = StreamSink(self.dut, name, layout, self.clock, period_ns=self.period_ns)
        self.ports.append(model.port)
        return model

    def set_idle_generator(self, pattern: Pattern | None = None) -> None:
        """The source's idle pattern (one of :data:`PATTERNS`)."""
        self.source.set_pause_generator(_pauses(pattern, self.seed * 7919 + 1))

    def set_backpressure_generator(self, pattern: Pattern | None = None) -> None:
        """The sink's backpressure pattern (one of :data:`PATTERNS`)."""
        self.sink.set_pause_generator(_pauses(pattern, self.seed * 7919 + 2))

    def cycle(self) -> int:
        """The current cycle, counted from the start of the simulation."""
        return _cycle(self.period_ns)

    async def reset(self) -> None:
        self.rst.value = 1
        await ClockCycles(self.clock, 4)
        self.rst.value = 0
        await ClockCycles(self.clock, 2)

    def timeout_cycles(self, messages: Sequence[bytes]) -> int:
        """A generous limit for ``messages`` to be answered under any of :data:`PATTERNS`."""
        # Every beat and every response beat could wait on a pause of 12 cycles.
        beats = sum(len(m) // self.source.width + 1 for m in messages)
        return 40 * (beats + 8 * len(messages)) + 1000
