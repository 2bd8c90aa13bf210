"""Small kernels for the contract's own tests: one that keeps the contract, and one for each way
of breaking it.

:class:`BeatCountKernel` answers each request message with one beat holding the number of beats
the request had, and raises ``error`` when the request's last beat says it holds more bytes
than a beat has. It takes a beat only while no response is waiting, which is slow but keeps the
stream rules trivially. Each ``flaw`` breaks one part of the contract, and only that part.
"""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.stream import byte_layout

__all__ = ["FLAWS", "BeatCountKernel"]

#: Each flaw, and the contract assertion a kernel with it fails.
FLAWS = {
    # Takes o_stream.valid back after one cycle, whether or not the beat was taken.
    "drops_valid": "o_valid_held",
    # Counts on in the response's data while the response waits for o_stream.ready.
    "changes_payload": "o_payload_held",
    # Never answers a malformed request (a last beat with more bytes than a beat holds).
    "loses_malformed": "response_in_time",
    # Sends every response twice.
    "answers_twice": "one_response_per_request",
    # Stops taking input for good after a malformed request (answering that one).
    "stops_input": "input_in_time",
}


class BeatCountKernel(wiring.Component):
    """One response beat per request message: the request's beat count, ``error`` if malformed.

    Parameters
    ----------
    width : int
        Bytes per beat.
    flaw : str or None
        One of :data:`FLAWS`, or ``None`` for a kernel that keeps the contract.
    op : bool
        Give the request layout an 8-bit ``op`` field (which the kernel ignores), as the link's
        requests are about to have: the contract must not care which fields there are.
    """

    def __init__(self, width: int = 4, flaw: str | None = None, *, op: bool = False):
        if flaw is not None and flaw not in FLAWS:
            raise ValueError(f"BeatCountKernel flaw must be None or one of {', '.join(FLAWS)}, "
                             f"not {flaw!r}")
        self.width = width
        self.flaw = flaw
        request = byte_layout(width)
        if op:
            request = data.StructLayout({**dict(request.members), "op": unsigned(8)})
        super().__init__({
            "i_stream": In(stream.Signature(request)),
            "o_stream": Out(stream.Signature(byte_layout(width))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        flaw = self.flaw

        beats = Signal(8 * self.width)
        pending = Signal()  # a response waits in the output register
        count = Signal(8 * self.width)
        error = Signal()
        again = Signal()  # answers_twice: the second copy is still to go
        stopped = Signal()  # stops_input: the kernel has stopped taking input

        m.d.comb += [
            i.ready.eq(~pending & ~again & ~stopped),
            o.valid.eq(pending),
            o.payload.data.eq(count),
            o.payload.nbytes.eq(self.width),
            o.payload.last.eq(1),
            o.payload.error.eq(error),
        ]

        with m.If(pending & o.ready):
            m.d.sync += pending.eq(0)
            if flaw == "answers_twice":
                m.d.sync += again.eq(1)
        if flaw == "answers_twice":
            with m.If(again):
                m.d.sync += [pending.eq(1), again.eq(0)]
        if flaw == "drops_valid":
            with m.If(pending):
                m.d.sync += pending.eq(0)
        if flaw == "changes_payload":
            with m.If(pending & ~o.ready):
                m.d.sync += count.eq(count + 1)

        with m.If(i.valid & i.ready):
            m.d.sync += beats.eq(beats + 1)
            with m.If(i.payload.last):
                malformed = i.payload.nbytes > self.width
                m.d.sync += [
                    beats.eq(0),
                    count.eq(beats + 1),
                    error.eq(malformed),
                    pending.eq(~malformed if flaw == "loses_malformed" else 1),
                ]
                if flaw == "stops_input":
                    with m.If(malformed):
                        m.d.sync += stopped.eq(1)
        return m
