"""The gateware end of the link: frames in, kernel calls, frames out.

The bridge is three stages that run concurrently, joined by registers, so that a byte can
arrive every cycle while the previous request executes and the one before it is answered
(every ``8 // crc_bits`` cycles with CRCs of fewer bits a cycle: see ``crc_bits``):

receive
    COBS-decodes the link bytes, checks each frame's CRC-32C on the fly, writes the header into
    a header memory and the payload into one of two frame buffers. A good frame is handed
    to the executor; a bad or short one is dropped (and counted) without touching the other
    buffer. Input stalls only while both buffers hold frames the executor has not yet read.
execute
    applies the rules of :mod:`hdl.link.protocol` to one frame at a time: answers system
    requests (OP_SYNC moves the expected sequence number), replays kept responses, refuses
    frames out of sequence, resets a kernel (OP_RESET), and runs a kernel call by feeding the
    frame's payload to the kernel while collecting its response into the replay slot of the
    frame's sequence number. It frees the frame buffer as soon as the payload has been read.
    It reads a frame's header a word per cycle, into its one header register but for the
    sequence number, which the header memory's read ports hold, and decides on the frame a
    cycle after, from comparisons (of the sequence number, the kernel, the opcode)
    registered in between. It hands a response to the sender only while the sender is idle,
    into the sender's own registers and the meta memory (one copy), and changes the expected
    sequence number only then, so the sender reads it live.
send
    builds each response frame (header, payload from a replay slot, the manifest (kept in the
    meta memory's spare entries), the counters or a register, CRC-32C) one byte per cycle (or
    per ``8 // crc_bits`` cycles) and COBS-encodes it. The counters live in a
    :class:`~hdl.link.counters.CounterBank` (their totals in block RAM), which counts
    each event in the cycle it happens: each is read from it, as it is when the read is taken,
    just before its first byte goes, and the send waits for it (the bank's sweeper reaches the
    counter within two cycles a counter, and the result comes two cycles later).

Kernel traffic is a byte per cycle, packed into and unpacked from each kernel's beats of
``width`` bytes. Everything the bridge drives into a kernel comes from its own flip-flops
(``o_stream.ready`` from a few levels of logic over them), and what it takes back from a
kernel only enters a few levels of logic before a flip-flop, so the bridge does not lengthen a
kernel's critical path. That holds because what the bridge decides around a kernel's
handshakes is kept in flip-flops, a step ahead: whether the payload is at its end or its last
byte, whether the replay slot is full or a byte short, whether the watchdog has gone off. A
kernel's handshakes reach the event counters' flip-flops through no gate, and what a timeout
sets only through one flip-flop, the watchdog's verdict.

A kernel's response is collected into the replay slot of whichever frame is running on that
kernel, during every frame of its message, and beyond it by continuation frames:

* A frame of a message (a frame that is not a continuation) feeds its payload to the kernel,
  every beat carrying the frame's opcode in ``op``, and meanwhile collects what the kernel
  answers, up to ``max_response`` bytes; while the slot is full the kernel is held
  (``o_stream.ready`` low). A FLAG_MORE frame is done when its payload is in: a beat the kernel
  gives after that waits for the next frame to the kernel. The frame that ends the message is
  done when the response has ended (its last beat taken) or the slot is full; then the
  response carries FLAG_MORE and the kernel holds a *pending* response.
* A continuation (FLAG_CONTINUE) collects the next bytes of a pending response the same way,
  with FLAG_MORE while more remains. With nothing pending (no response, or the kernel's
  message still open) it is answered STATUS_OK, empty.
* A new message to a kernel whose previous response has not ended (pending, or left by a
  timeout) first takes and drops the rest of that response, up to its last beat, while the new
  message's payload goes in: none of it reaches the new response.
* The frame that takes a response's last beat answers STATUS_KERNEL_ERROR if the kernel raised
  ``error`` on it, with what it collected as payload.
* Between frames, a kernel's output is held while it has a message or a response open; a
  kernel with neither has whatever it gives (out of turn) taken and dropped.

A beat is taken only when all of its bytes fit in the slot: ``max_response`` is a multiple of
every kernel's width, and every beat but a response's last is full, so a beat never straddles
two frames.

Choices where :mod:`hdl.link.protocol` leaves room:

* Every good frame to a kernel other than the system kernel is sequenced, whatever its status:
  a frame with the expected number consumes it, and its response (``STATUS_BAD_FRAME``,
  ``STATUS_UNKNOWN_KERNEL``, ... included) is kept for replay.
* A kernel that makes no progress (takes no beat, gives none, and no beat of it is being
  written) for ``timeout_cycles`` while a frame waits on it earns ``STATUS_KERNEL_TIMEOUT`` with
  an empty payload. The frame is given up in the next cycle, in which the bridge takes no beat
  from the kernel (the kernel may still take one). Its message stays open unless its last beat
  went in. What it had answered in that frame is lost, so its response is no longer pending (a
  continuation is answered STATUS_OK, empty), but it is still open: its next message drops the
  rest of it first. A kernel held because its slot is full (it answered more than its frames
  allow) is timed out the same way.
* FLAG_MORE is ignored on a continuation, and a continuation's opcode is not compared with its
  message's (it only has to be one the kernel declares). An OP_RESET frame is a reset whatever
  its flags, and its payload is ignored.
* OP_RESET raises the kernel's reset (a ``ResetInserter`` around it) for one cycle, from a
  flip-flop, and clears the bridge's own state of the kernel: its open message, the partial
  beat of it, its open or pending response. A kernel whose state lives in memories, which a
  reset does not clear, clears them itself after a reset and holds ``i_stream.ready`` low
  meanwhile; the bridge waits for it like for any kernel, so that must take well under
  ``timeout_cycles``.
* OP_SYNC's target is the first 4 bytes of its payload (bytes past the fourth are ignored). A
  sync that moves the expected number forgets the replay window by counting no frame executed:
  the slots keep their bytes, but no number from before the sync reaches them, so such a frame
  is answered ``STATUS_OUT_OF_SEQUENCE``.
* ``frames_in`` counts frames that passed the CRC check (each gets exactly one response);
  ``bad_crc`` counts frames dropped for a wrong CRC, a size under a header and a CRC, or a
  broken COBS encoding. An empty frame (two delimiters in a row) is ignored, not counted.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from ..kernels.crc32c import INIT, XOROUT, crc32c_ref, crc_bits_step, crc_byte_step
from ..stream import WIDTHS, byte_stream, request_stream
from .cobs import CobsDecoder, CobsEncoder, decoded_layout, frame_layout
from .counters import CounterBank
from .protocol import (
    CRC_SIZE,
    FLAG_CONTINUE,
    FLAG_MORE,
    FLAG_RESPONSE,
    HEADER,
    HEADER_SIZE,
    KERNEL_COUNTERS,
    LINK_COUNTERS,
    LINK_VERSION,
    MAX_OPERATIONS,
    MAX_PAYLOAD,
    MAX_RESPONSE,
    OP_COUNTERS,
    OP_MANIFEST,
    OP_RESET,
    OP_SYNC,
    REPLAY_WINDOW,
    SEQ_BITS,
    STATUS_BAD_FRAME,
    STATUS_BAD_OPCODE,
    STATUS_KERNEL_ERROR,
    STATUS_KERNEL_TIMEOUT,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_OUT_OF_SEQUENCE,
    STATUS_TOO_LONG,
    STATUS_UNKNOWN_KERNEL,
    SYSTEM_KERNEL_ID,
)
from .ram import NO_RW_CHECK, read_port

__all__ = ["LinkBridge", "CRC_RESIDUE"]

#: The CRC-32C register (before the final inversion) after a frame and its own CRC, least
#: significant byte first, have gone through it: the same for every frame, so the receiver
#: checks a frame without knowing where its CRC starts.
CRC_RESIDUE = crc32c_ref(bytes(CRC_SIZE)) ^ XOROUT

_STATUS_BITS = max(STATUS_NAMES).bit_length()
_SEQ_BYTES = SEQ_BITS // 8


def _below_seq(value):
    """``value < _SEQ_BYTES``, a power of two: a test of the high bits (no carry chain)."""
    return value[exact_log2(_SEQ_BYTES):] == 0


#: The header fields the executor keeps of a request.
_X_LAYOUT = data.StructLayout({
    "kernel": 8, "opcode": 8, "flags": 8,
})
#: Words of 4 bytes a header is kept in (the receiver's header memory).
_HEADER_WORDS = 3
assert 4 * (_HEADER_WORDS - 1) < HEADER_SIZE <= 4 * _HEADER_WORDS
#: The header memory's word that holds the sequence number, and its offset in the header.
_SEQ_WORD = HEADER["seq"].offset // 32
_SEQ_OFFSET = HEADER["seq"].offset // 8
assert HEADER["seq"].offset % 32 == 0 and HEADER["seq"].width == SEQ_BITS == 32
#: And the length, in its low half.
_LENGTH_WORD = HEADER["length"].offset // 32
assert HEADER["length"].offset % 32 == 0 and _LENGTH_WORD not in (0, _SEQ_WORD)
#: The word of the header memory after the header's, which holds the first 4 bytes of the
#: payload (an OP_SYNC's target) in the lanes a header word's bytes have, the sequence number's.
_TARGET_WORD = _HEADER_WORDS
assert _TARGET_WORD == 3 and HEADER_SIZE % 4 == 2  # the lanes below: (offset + 2) % 4


def _at_least(value, k: int):
    """``value >= k`` for a constant ``k``, as gates: Yosys maps a comparison to a carry chain,
    a logic cell a bit, where a comparison with a constant needs a few LUTs."""
    value = value.as_unsigned()
    if k <= 0:
        return Const(1)
    if k >= 1 << len(value):
        return Const(0)
    at_least = Const(1)  # the bits below are equal to k's
    for i in range(len(value)):
        at_least = (value[i] & at_least) if (k >> i) & 1 else (value[i] | at_least)
    return at_least


class _Source(enum.Enum, shape=3):
    """Where the payload of a response frame comes from."""
    EMPTY = 0
    SLOT = 1  # a replay slot; its status and length too
    MANIFEST = 2  # the expected sequence number, then the manifest ROM
    COUNTERS = 3
    VALUE = 4  # a sequence number (the expected one), u32 LE


class LinkBridge(wiring.Component):
    """The device end of the offload link, in front of a set of kernels.

    Takes the COBS-encoded request frames of :mod:`hdl.link.protocol` on ``i_bytes`` and sends
    one response frame for each good request on ``o_bytes``. See the module documentation for
    how it works and for the choices it makes where the protocol leaves room.

    Parameters
    ----------
    kernels : list of (int, wiring.Component)
        The kernels and their ids (1 to 255, each once). A kernel has a ``width`` attribute, an
        ``operations`` attribute (a tuple of 1 to MAX_OPERATIONS operation names; opcode ``n``
        is ``operations[n]``) and ports ``i_stream: In(request_stream(width))``,
        ``o_stream: Out(byte_stream(width))``. The bridge makes them its submodules, each
        behind a reset of its own (OP_RESET). OP_COUNTERS reports them in this order.
    manifest : bytes
        What OP_MANIFEST answers after the expected sequence number (the compact JSON of
        :mod:`hdl.link.protocol`, built by whoever assembles the board). Held in a ROM.
    max_payload : int
        Largest request payload taken in one frame (4 to 65535: OP_SYNC's target must fit).
        Two frame buffers of the next power of two bytes are allocated.
    max_response : int
        Largest kernel response sent in one frame and kept for replay (1 to 65535, a multiple
        of every kernel's width, so that a response beat never straddles two frames).
    timeout_cycles : int
        Cycles without an input byte after which a half-received frame is dropped, and cycles
        without progress after which a kernel call is given up.
    window : int
        Responses kept for replay, a power of two from 1 to 32768.
    framing : str
        ``"cobs"``: the link is a byte stream of COBS-encoded frames (a UART, a TCP socket),
        which the bridge decodes and encodes itself, dropping a half-received frame after
        ``timeout_cycles`` of silence. ``"frames"``: the frames come and go whole (over UDP,
        :mod:`hdl.eth.link` cuts them out of datagrams and packs them back): ``i_frames`` and
        ``o_frames`` instead of ``i_bytes`` and ``o_bytes``, and no silence timeout (the
        ``timeouts`` counter stays 0).
    crc_bits : int
        Bits of a byte that each CRC-32C (the receiver's check, the sender's) takes in a cycle:
        8, 4, 2 or 1. At 8 the bridge takes a byte a cycle and sends one; below, a byte takes
        ``8 // crc_bits`` cycles each way, for about a quarter of the CRCs' logic at 2, which a
        link that slow (a UART: tens of cycles a byte) can spare.

    Members
    -------
    i_bytes : ``In(stream.Signature(8))``
        Link bytes from the host (``"cobs"``).
    o_bytes : ``Out(stream.Signature(8))``
        Link bytes to the host (``"cobs"``).
    i_frames : ``In(stream.Signature(cobs.decoded_layout))``
        Request frames, a byte a beat, each followed by an end beat (``bad`` set for a frame
        that was cut short) (``"frames"``).
    o_frames : ``Out(stream.Signature(cobs.frame_layout))``
        Response frames, a byte a beat, ``last`` on each frame's final byte (``"frames"``).
    """

    def __init__(self, kernels, manifest: bytes, *, max_payload: int = MAX_PAYLOAD,
                 max_response: int = MAX_RESPONSE, timeout_cycles: int,
                 window: int = REPLAY_WINDOW, framing: str = "cobs", crc_bits: int = 8):
        if framing not in ("cobs", "frames"):
            raise ValueError(f"LinkBridge framing must be 'cobs' or 'frames', not {framing!r}")
        if crc_bits not in (1, 2, 4, 8) or isinstance(crc_bits, bool):
            raise ValueError(f"LinkBridge crc_bits must be 1, 2, 4 or 8, not {crc_bits!r}")
        self.crc_bits = crc_bits
        self.framing = framing
        try:
            kernels = list(kernels)
        except TypeError:
            raise TypeError(
                f"LinkBridge kernels must be a list of (kernel id, component) pairs, "
                f"not {kernels!r}"
            ) from None
        seen = set()
        for entry in kernels:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise TypeError(
                    f"LinkBridge kernels must be (kernel id, component) pairs, not {entry!r}"
                )
            kernel_id, component = entry
            if not isinstance(kernel_id, int) or isinstance(kernel_id, bool):
                raise TypeError(f"LinkBridge kernel id must be an integer, not {kernel_id!r}")
            if not 1 <= kernel_id <= 255:
                raise ValueError(
                    f"LinkBridge kernel id must be from 1 to 255 (0 is the system kernel), "
                    f"not {kernel_id!r}"
                )
            if kernel_id in seen:
                raise ValueError(f"LinkBridge kernel id {kernel_id} is given twice")
            seen.add(kernel_id)
            width = getattr(component, "width", None)
            if not isinstance(component, wiring.Component) or width not in WIDTHS:
                raise TypeError(
                    f"LinkBridge kernel {kernel_id} must be a wiring.Component with a width "
                    f"of {WIDTHS} bytes, not {component!r}"
                )
            members = component.signature.members
            if ("i_stream" not in members or "o_stream" not in members
                    or members["i_stream"] != In(request_stream(width))
                    or members["o_stream"] != Out(byte_stream(width))):
                raise TypeError(
                    f"LinkBridge kernel {kernel_id} must have ports "
                    f"i_stream: In(request_stream({width})) and "
                    f"o_stream: Out(byte_stream({width}))"
                )
            operations = getattr(component, "operations", None)
            if (not isinstance(operations, tuple) or not 1 <= len(operations) <= MAX_OPERATIONS
                    or not all(isinstance(name, str) for name in operations)):
                raise TypeError(
                    f"LinkBridge kernel {kernel_id} must declare its operations as a tuple of "
                    f"1 to {MAX_OPERATIONS} names, not {operations!r}"
                )
        if not isinstance(manifest, (bytes, bytearray)):
            raise TypeError(f"LinkBridge manifest must be bytes, not {manifest!r}")
        if len(manifest) > 0xFFFF - _SEQ_BYTES:
            raise ValueError(
                f"LinkBridge manifest must be at most {0xFFFF - _SEQ_BYTES} bytes, "
                f"not {len(manifest)}"
            )
        for name, value, low, high in (
            # OP_SYNC's payload must fit in a frame.
            ("max_payload", max_payload, _SEQ_BYTES, 0xFFFF),
            ("max_response", max_response, 1, 0xFFFF),
            ("timeout_cycles", timeout_cycles, 1, None),
            ("window", window, 1, 0x8000),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"LinkBridge {name} must be an integer, not {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise ValueError(f"LinkBridge {name} must be {bound}, not {value!r}")
        if window & (window - 1):
            raise ValueError(f"LinkBridge window must be a power of two, not {window!r}")
        for kernel_id, component in kernels:
            if max_response % component.width:
                raise ValueError(
                    f"LinkBridge max_response must be a multiple of every kernel's width, "
                    f"not {max_response!r} (kernel {kernel_id} has {component.width} bytes a beat)"
                )

        self.kernels = tuple(kernels)
        self.manifest = bytes(manifest)
        self.max_payload = max_payload
        self.max_response = max_response
        self.timeout_cycles = timeout_cycles
        self.window = window
        if framing == "cobs":
            super().__init__({
                "i_bytes": In(stream.Signature(8)),
                "o_bytes": Out(stream.Signature(8)),
            })
        else:
            super().__init__({
                "i_frames": In(stream.Signature(decoded_layout)),
                "o_frames": Out(stream.Signature(frame_layout)),
            })

    @property
    def counters_size(self) -> int:
        """Bytes in the payload of the OP_COUNTERS response."""
        return 4 * (len(LINK_COUNTERS) + len(KERNEL_COUNTERS) * len(self.kernels))

    def elaborate(self, platform):
        m = Module()

        n_kernels = len(self.kernels)
        widths = [component.width for _, component in self.kernels]
        max_width = max(widths, default=1)
        # OP_RESET pulses a kernel's reset for a cycle, from a flip-flop.
        k_reset = [Signal(name=f"reset_k{kernel_id}") for kernel_id, _ in self.kernels]
        for (kernel_id, component), reset in zip(self.kernels, k_reset, strict=True):
            m.submodules[f"kernel_{kernel_id}"] = ResetInserter(reset)(component)
            m.d.sync += reset.eq(0)

        # The counters of OP_COUNTERS, but open_message (a kernel's in_msg, live), are kept in a
        # bank: the link's, then each kernel's, in the order they are reported.
        kernel_events = [name for name in KERNEL_COUNTERS if name != "open_message"]
        m.submodules.counters = bank = CounterBank(
            len(LINK_COUNTERS) + len(kernel_events) * n_kernels)
        k_events = [{} for _ in range(n_kernels)]

        # ---- Receive ----------------------------------------------------------------------

        # A half frame is dropped after timeout_cycles without a byte. The decoder is reset
        # with it: the bytes it holds belong to the frame being dropped.
        flush = Signal()
        if self.framing == "cobs":
            decoder = CobsDecoder()
            m.submodules.decoder = ResetInserter(flush)(decoder)
            wiring.connect(m, wiring.flipped(self.i_bytes), decoder.i_stream)
            frames_in = decoder.o_stream
        else:
            frames_in = self.i_frames

        if self.framing == "cobs":  # whole frames (UDP) are never left half received
            in_frame = Signal()
            silence = Signal(range(self.timeout_cycles))
            with m.If(self.i_bytes.valid):
                m.d.sync += silence.eq(0)
                with m.If(self.i_bytes.ready):
                    m.d.sync += in_frame.eq(self.i_bytes.payload != 0)
            with m.Elif(in_frame):
                with m.If(silence == self.timeout_cycles - 1):
                    m.d.comb += flush.eq(1)
                    m.d.sync += [silence.eq(0), in_frame.eq(0)]
                with m.Else():
                    m.d.sync += silence.eq(silence + 1)

        # The memories are read through ram.read_port: none reads a byte it is writing when the
        # byte matters. The executor reads a frame buffer only while the receiver cannot write
        # it (it is full); likewise a header. The sender reads a replay slot that the executor
        # is not writing (it waits while the sender has the slot it is to write), and the meta
        # of a response only once the executor has written it and while it writes none.
        buf_bits = ceil_log2(self.max_payload)
        m.submodules.frame_buffers = frame_buffers = Memory(
            shape=8, depth=2 << buf_bits, init=[], attrs=NO_RW_CHECK)
        frame_wr = frame_buffers.write_port()
        frame_rd = read_port(m, frame_buffers, "frame_rd")

        # Each frame buffer's header is kept in a small memory of its own, in words of 4 bytes
        # in wire order (_HEADER_WORDS of them, then the sync target's), which the executor reads
        # a word per cycle (see LOAD); only what the end of the frame decides is kept for each
        # buffer.
        # Two memories of 16-bit words, the low and the high half of each, each one block RAM.
        hdr_wr, hdr_rd = [], []
        for half in ("lo", "hi"):
            m.submodules[f"headers_{half}"] = headers = Memory(
                shape=16, depth=8, init=[], attrs=NO_RW_CHECK)
            hdr_wr.append(headers.write_port(granularity=8))
            hdr_rd.append(read_port(m, headers, f"hdr_rd_{half}"))
        d_bad = [Signal(name=f"bad{b}") for b in range(2)]
        d_too_long = [Signal(name=f"too_long{b}") for b in range(2)]
        full = [Signal(name=f"full{b}") for b in range(2)]
        wbuf = Signal()  # buffer the receiver fills
        rbuf = Signal()  # buffer the executor takes next

        frame_max = (1 << 17) - 1  # more than any consistent frame, so the count saturates
        r_idx = Signal(range(frame_max + 1))
        r_crc = Signal(32, init=INIT)
        h_version_ok = Signal()
        h_cont = Signal()
        # The frame's size as its length field gives it (HEADER_SIZE + CRC_SIZE more), added
        # a byte at a time as the field comes in, in the logic before the flip-flops that keep
        # it (which would hold a copy of the byte otherwise).
        frame_extra = HEADER_SIZE + CRC_SIZE
        h_end = Signal(17)
        h_carry = Signal()

        rx_good, rx_bad = Signal(), Signal()
        # The header memory's word and byte lane for frame byte r_idx: the header's in wire
        # order, then the payload's first 4 bytes in _TARGET_WORD, lane (r_idx + 2) % 4.
        past_header = _at_least(r_idx, HEADER_SIZE)
        hdr_word = Mux(past_header, _TARGET_WORD, r_idx[2:4])
        hdr_lane = Cat(r_idx[0], r_idx[1] ^ past_header)
        beat = frames_in
        # A byte goes through the CRC crc_bits at a time: in the cycles before its last part,
        # the byte waits (it is not taken) while its parts go in, counted in r_part.
        crc_k = self.crc_bits
        r_part = Signal(range(8 // crc_k))
        r_last_part = r_part == 8 // crc_k - 1
        rx_ready = ~Mux(wbuf, full[1], full[0]) & (beat.payload.end | r_last_part)
        m.d.comb += beat.ready.eq(rx_ready)
        if crc_k < 8:
            rx_crc_next = crc_bits_step(
                m, r_crc, beat.payload.data.word_select(r_part, crc_k), "rx_crc")
            with m.If(beat.valid & ~beat.payload.end & ~r_last_part):
                m.d.sync += [r_crc.eq(rx_crc_next), r_part.eq(r_part + 1)]
        else:
            rx_crc_next = crc_byte_step(m, r_crc, beat.payload.data, "rx_crc")
        with m.If(beat.valid & rx_ready):
            with m.If(beat.payload.end):
                good = (~beat.payload.bad & _at_least(r_idx, HEADER_SIZE + CRC_SIZE)
                        & (r_crc == CRC_RESIDUE))
                with m.If(good):
                    m.d.comb += rx_good.eq(1)
                    for b in range(2):
                        with m.If(wbuf == b):
                            m.d.sync += [
                                d_bad[b].eq(
                                    ~h_version_ok
                                    | (r_idx != h_end)
                                    | (h_cont & (h_end != frame_extra))),
                                d_too_long[b].eq(
                                    _at_least(h_end, self.max_payload + 1 + frame_extra)),
                            ]
                    m.d.sync += wbuf.eq(~wbuf)
                with m.Else():
                    m.d.comb += rx_bad.eq(1)
                m.d.sync += [r_idx.eq(0), r_crc.eq(INIT)]
            with m.Else():
                byte = beat.payload.data
                m.d.sync += [
                    r_idx.eq(Mux(r_idx == frame_max, r_idx, r_idx + 1)),
                    r_crc.eq(rx_crc_next), r_part.eq(0),
                ]
                # The header, then the payload's first 4 bytes (a sync's target), go into the
                # header memory of the buffer being filled: the executor has read it already,
                # and a good frame writes it all.
                with m.If(~_at_least(r_idx, HEADER_SIZE + _SEQ_BYTES)):
                    m.d.comb += Cat(hdr_wr[0].en, hdr_wr[1].en).eq(1 << hdr_lane)
                with m.Switch(r_idx):
                    with m.Case(0):
                        m.d.sync += h_version_ok.eq(byte == LINK_VERSION)
                    with m.Case(3):
                        m.d.sync += h_cont.eq((byte & FLAG_CONTINUE) != 0)
                    with m.Case(8):
                        m.d.sync += Cat(h_end[:8], h_carry).eq(byte + frame_extra)
                    with m.Case(9):
                        m.d.sync += h_end[8:].eq(byte + h_carry)
                # Everything after the header goes into the buffer (the CRC too, when there is
                # room: it is never read), each byte at its offset in the frame modulo the
                # buffer's size, so that the payload wraps around the end of the buffer; a frame
                # longer than the buffer only has its CRC checked, to be answered
                # STATUS_TOO_LONG.
                with m.If(_at_least(r_idx, HEADER_SIZE)
                          & ~_at_least(r_idx, HEADER_SIZE + (1 << buf_bits))):
                    m.d.comb += frame_wr.en.eq(1)
        m.d.comb += [
            frame_wr.addr.eq(Cat(r_idx[:buf_bits], wbuf)),
            frame_wr.data.eq(beat.payload.data),
            hdr_wr[0].addr.eq(Cat(hdr_word, wbuf)),
            hdr_wr[0].data.eq(beat.payload.data.replicate(2)),
            hdr_wr[1].addr.eq(Cat(hdr_word, wbuf)),
            hdr_wr[1].data.eq(beat.payload.data.replicate(2)),
        ]
        with m.If(flush):
            m.d.sync += [r_idx.eq(0), r_crc.eq(INIT), r_part.eq(0)]

        # ---- Execute ----------------------------------------------------------------------

        win_bits = exact_log2(self.window)
        slot_bits = ceil_log2(self.max_response)
        m.submodules.replay_slots = replay_slots = Memory(
            shape=8, depth=self.window << slot_bits, init=[], attrs=NO_RW_CHECK)
        slot_wr = replay_slots.write_port()
        slot_rd = read_port(m, replay_slots, "slot_rd")
        # The longest response payload: a replay slot, the manifest, the counters.
        resp_max = max(self.max_response, _SEQ_BYTES + len(self.manifest), self.counters_size)
        # What the header of a response says but its sequence number: for each replay slot,
        # and after them, for the response being sent if it is not from a slot. The sender
        # reads it from here as it goes (only the executor writes it, and only while the sender
        # is free).
        meta_layout = data.StructLayout({
            "kernel": 8, "status": _STATUS_BITS, "length": range(resp_max + 1),
            "more": 1,  # FLAG_MORE in the response
        })
        # Past them, from manifest_base, the memory holds the MANIFEST response's payload (the
        # expected number's 4 bytes, left 0, then the manifest), 2 bytes an entry in its low
        # bits: a ROM in the block RAMs the meta takes anyway, not one of its own.
        manifest_base = self.window + 1
        rom = bytes(_SEQ_BYTES) + self.manifest + b"\x00"
        rom_words = [data.Const(meta_layout, int.from_bytes(rom[i:i + 2], "little"))
                     for i in range(0, len(rom) - 1, 2)] if self.manifest else []
        m.submodules.replay_meta = replay_meta = Memory(
            shape=meta_layout, depth=manifest_base + len(rom_words),
            init=[data.Const(meta_layout, 0)] * manifest_base + rom_words, attrs=NO_RW_CHECK)
        meta_wr = replay_meta.write_port()
        meta_rd = read_port(m, replay_meta, "meta_rd")

        expected = Signal(SEQ_BITS)  # sequence number of the next frame to execute
        executed = Signal(range(self.window + 1))  # frames executed, up to the window
        target = expected[:win_bits]  # the replay slot of the frame being executed

        # The request being executed: its header, read from the header memory a word per
        # cycle, and what the receiver decided of it.
        x = Signal(_X_LAYOUT, reset_less=True)
        # Of its length: fp at the payload's last byte but one (for a frame that runs: it is
        # not too long, so this has max_payload's bits), whether it is 0 or 1 or under 4.
        x_before_last = Signal(range(HEADER_SIZE + self.max_payload))
        x_length_0, x_length_1, x_short = Signal(), Signal(), Signal()
        x_bad = Signal()  # bad: a wrong version, an inconsistent length or continuation
        x_too_long = Signal()
        x_more = Signal()  # FLAG_MORE, on a frame that is not a continuation
        x_cont = Signal()  # FLAG_CONTINUE
        m.d.comb += [
            x_more.eq((x.flags & (FLAG_MORE | FLAG_CONTINUE)) == FLAG_MORE),
            x_cont.eq((x.flags & FLAG_CONTINUE) != 0),
        ]
        hp = Signal(range(_HEADER_WORDS))  # the header word being read
        hdr_word_in = Cat(hdr_rd[0].data, hdr_rd[1].data)
        # The request's sequence number, where the header memory's read ports hold it: no copy.
        # During a sync, its target.
        x_seq = hdr_word_in
        exec_idle = Signal()
        exec_fsm_loading = Signal()
        x_buf = Signal()
        x_held = Signal()  # its frame buffer is not yet released
        x_known = Signal()
        x_op_ok = Signal()  # its opcode is one of its kernel's operations, or OP_RESET
        x_kidx = Signal(range(max(n_kernels, 1)))
        x_width_m1 = Signal(range(max_width))
        r_status = Signal(_STATUS_BITS)
        r_length = Signal(range(self.max_response + 1))
        r_more = Signal()  # the response carries FLAG_MORE

        # The response handed to the sender.
        # The response is made straight into the sender's registers, only while the sender is
        # idle (s_free): one copy of it. The expected number changes only then too (a frame
        # finishing, a sync), so the sender reads it live for MANIFEST and VALUE.
        p_valid = Signal()  # a response is made and the sender has not yet started on it
        s_free = Signal()  # the sender is idle and no response waits
        b_src = Signal(_Source)
        b_slot = Signal(win_bits + 1)  # its replay slot, or the window: its meta entry
        # The response's sequence number (the request's). With CRCs of a byte a cycle, the
        # sender keeps a copy of it, so that the executor goes on with the next frame at once.
        # Slower, the sender reads it where the header memory's read ports hold it (x_seq), and
        # the executor leaves them alone (seq_wait) until its bytes have gone: 32 flip-flops
        # fewer, for a few cycles a frame.
        seq_wait = Signal()
        if self.crc_bits == 8:
            b_seq = Signal(SEQ_BITS)
        else:
            b_seq = x_seq

        release = Signal()
        for b in range(2):
            with m.If(rx_good & (wbuf == b)):
                m.d.sync += full[b].eq(1)
            with m.If(release & (x_buf == b)):
                m.d.sync += full[b].eq(0)

        def release_buffer():
            with m.If(x_held):
                m.d.comb += release.eq(1)
                m.d.sync += x_held.eq(0)

        # A response's kernel and sequence number are loaded while the sender is free (so in
        # the cycle the response is made, too), not by each response: their enables stay one
        # flip-flop. The sequence number is x_seq's (see b_seq), but during a sync, whose target
        # replaces it in x_seq (see below).
        def respond(src, status, length=0):
            m.d.sync += [p_valid.eq(1), b_src.eq(src)]
            if src != _Source.SLOT:
                m.d.comb += [
                    meta_wr.en.eq(1),
                    meta_wr.addr.eq(self.window),
                    meta_wr.data.kernel.eq(x.kernel),
                    meta_wr.data.status.eq(status),
                    meta_wr.data.length.eq(length),
                    meta_wr.data.more.eq(0),
                ]
                m.d.sync += b_slot.eq(self.window)

        # Set by the sender: it is sending a response.
        b_slot_busy = Signal()
        slot_hazard = (p_valid | b_slot_busy) & (b_slot == target)

        # The expected number is only ever loaded from x_seq: a frame finishes because its
        # number is the expected one (then it steps past it), and a sync's target is read into
        # x_seq. One adder for both keeps a 32-bit mux off the iCE40.
        e_load, e_step = Signal(), Signal()
        with m.If(e_load):
            m.d.sync += expected.eq(x_seq + e_step)
        # What DECIDE and SYNC_CHECK go by is registered every cycle from x, expected, executed
        # and the sender: each waits a cycle after x (or x_seq) was loaded (CHECK, SYNC_CHECK),
        # so that the 32-bit subtraction and its comparisons end in flip-flops. The slot hazard
        # a cycle old is a safe answer: only this FSM starts a response, and a hazard ends only
        # when the sender is done with the slot.
        seq_behind = Signal(SEQ_BITS)
        m.d.comb += seq_behind.eq(expected - x_seq)
        win_cmp = len(executed)  # bits of seq_behind compared with executed
        behind_mid_zero = seq_behind[win_cmp:-1] == 0
        behind_high_zero = behind_mid_zero & ~seq_behind[-1]
        seq_same = Signal()  # x_seq is the expected number
        seq_kept = Signal()  # x_seq is in the replay window (or the expected number)
        seq_ahead = Signal()  # x_seq is ahead of the expected number, E - T from 2**31 + 1
        x_system = Signal()  # x is for the system kernel
        op_sync, op_manifest, op_counters, op_reset = (
            Signal(name=f"op_{name}") for name in ("sync", "manifest", "counters", "reset"))
        slot_busy = Signal()  # slot_hazard
        m.d.sync += [
            # One subtractor; the tests are of its bits, below the window's and above.
            seq_same.eq(behind_high_zero & (seq_behind[:win_cmp] == 0)),
            seq_kept.eq(behind_high_zero & (seq_behind[:win_cmp] <= executed)),
            seq_ahead.eq(seq_behind[-1] & ~(behind_mid_zero & (seq_behind[:win_cmp] == 0))),
            x_system.eq(x.kernel == SYSTEM_KERNEL_ID),
            op_sync.eq(x.opcode == OP_SYNC),
            op_manifest.eq(x.opcode == OP_MANIFEST),
            op_counters.eq(x.opcode == OP_COUNTERS),
            op_reset.eq(x.opcode == OP_RESET),
            slot_busy.eq(slot_hazard),
        ]
        counted_replay, counted_oos = Signal(), Signal()

        # Kernel feed: payload bytes packed into the selected kernel's beats.
        # The frame offset of the next payload byte to take from the buffer (the payload
        # starts at HEADER_SIZE).
        fp = Signal(range(HEADER_SIZE + self.max_payload + 1))
        take = Signal()
        f_valid, f_last = Signal(), Signal()
        f_data = Signal(8 * max_width)
        f_nbytes = Signal(range(max_width + 1))
        acc = Signal(8 * (max_width - 1))  # bytes of a beat not yet full
        acc_n = Signal(range(max_width))
        last_sent = Signal()
        # What the bridge keeps of each kernel between frames: the partial beat a message spread
        # over several frames may leave; whether a message is open (a FLAG_MORE frame taken and
        # the frame that ends the message not); whether a response is open (its last beat not
        # taken); whether continuations may collect it (its message is over and no frame timed
        # out on it since, which would have lost bytes of it).
        saved_acc = [Signal(8 * (max_width - 1), name=f"saved_acc{k}") for k in range(n_kernels)]
        saved_acc_n = [Signal(range(max_width), name=f"saved_acc_n{k}")
                       for k in range(n_kernels)]
        in_msg = [Signal(name=f"in_msg{k}") for k in range(n_kernels)]
        out_open = [Signal(name=f"out_open{k}") for k in range(n_kernels)]
        pending = [Signal(name=f"pending{k}") for k in range(n_kernels)]

        # Kernel response: beats unpacked into bytes written to the replay slot.
        u_valid, got_last, r_error = Signal(), Signal(), Signal()
        u_data = Signal(8 * max_width)
        u_left = Signal(range(max_width + 1))
        draining = Signal()  # taking and dropping the rest of an abandoned response
        more_stop = Signal()  # a FLAG_MORE frame's payload is in: its slot takes no more beats
        # Cycles without progress, counted up from wd_start: its top bit is set in the
        # timeout_cycles-th, which is then the watchdog's test (no comparator).
        wd_bits = max(1, (self.timeout_cycles - 1).bit_length())
        wd_start = (1 << wd_bits) - (self.timeout_cycles - 1)
        watchdog = Signal(wd_bits + 1)
        # It went off in the cycle before: the frame times out in this one, which only the
        # kernel taking a beat may change. Registered, so that the many flip-flops a timeout
        # sets do not wait for this cycle's progress.
        timed_out = Signal()

        # The selected kernel's ports.
        def select(values):
            return Array(values)[x_kidx] if n_kernels else Const(0)
        kernels = [component for _, component in self.kernels]
        k_ready = select([c.i_stream.ready for c in kernels])
        o_valid = select([c.o_stream.valid for c in kernels])
        o_data = select([c.o_stream.payload.data for c in kernels])
        o_last = select([c.o_stream.payload.last for c in kernels])
        o_error = select([c.o_stream.payload.error for c in kernels])
        # Bytes that count in a beat: all of them but in the last, which says (and a count
        # over the width is taken as the width).
        o_count = select([
            Mux(c.o_stream.payload.last & (c.o_stream.payload.nbytes < c.width),
                c.o_stream.payload.nbytes, c.width)
            for c in kernels
        ])

        # Feed. The read port always holds the byte at fp, reading ahead when one is taken.
        # Where fp stands against the payload's length is kept in flip-flops, a byte ahead (set
        # in DECIDE, stepped with fp), so that no comparator sits in front of ``take``.
        byte = frame_rd.data
        fp_end = Signal()  # the payload is all taken: fp == HEADER_SIZE + x.length
        fp_last = Signal()  # fp == HEADER_SIZE + x.length - 1
        with m.If(take):
            m.d.sync += [fp_end.eq(fp_last), fp_last.eq(fp == x_before_last)]
        has_byte = ~fp_end
        msg_last_byte = ~x_more & fp_last
        forms_beat = (acc_n == x_width_m1) | msg_last_byte
        f_free = ~f_valid | k_ready
        # A message whose last frame has no payload ends with what the packer holds.
        final_beat = ~has_byte & ~x_more & ~last_sent & f_free
        placed = (Cat(acc, Const(0, 8)) | (byte << Cat(Const(0, 3), acc_n)))[:len(f_data)]
        feed_done = ~has_byte & (x_more | last_sent) & ~f_valid
        m.d.comb += frame_rd.addr.eq(Cat(Mux(take, fp + 1, fp)[:buf_bits], x_buf))
        # LOAD reads words 0, _LENGTH_WORD and _SEQ_WORD, a word a cycle; the read ports then
        # hold the sequence number (x_seq) until the frame's response is made. A sync reads its
        # target (_TARGET_WORD) in DECIDE, which they hold from SYNC on.
        hdr_next = Signal(2, init=_SEQ_WORD)  # the word asked for in LOAD and DECIDE
        hdr_read = Signal()  # ask for it (and for word 0 of the next buffer when IDLE)
        hdr_addr = Mux(exec_idle, Cat(Const(0, 2), rbuf), Cat(hdr_next, x_buf))
        for port in hdr_rd:
            m.d.comb += [port.addr.eq(hdr_addr), port.en.eq((exec_idle & ~seq_wait) | hdr_read)]

        # Collect. A beat is taken only when all of its bytes fit in the slot. As max_response
        # is a multiple of the width and every beat but a response's last is full, that is when
        # the slot is not full once the byte being written now is in. Everything here is a few
        # levels of logic from flip-flops: it drives the kernel's o_stream.ready.
        # Whether the slot is full, or a byte short of it, is kept in flip-flops (set in DECIDE,
        # stepped with r_length).
        slot_full = Signal()  # r_length == max_response
        slot_almost = Signal()  # r_length == max_response - 1
        room = Mux(u_valid, (u_left == 1) & ~slot_almost, ~slot_full)
        collect_ready = ~timed_out & (draining | (~got_last & ~more_stop & room))
        accept = o_valid & collect_ready
        # A FLAG_MORE frame is done when its payload is in (what the kernel gives after that
        # goes into the next frame's slot); the last frame of a message, or a continuation,
        # when the response has ended or the slot is full.
        done = feed_done & ~u_valid & ~draining & (more_stop | got_last | slot_full)
        m.d.comb += [
            slot_wr.addr.eq(Cat(r_length[:slot_bits], target)),
            slot_wr.data.eq(u_data[:8]),
        ]
        progress = take | final_beat | (f_valid & k_ready) | accept | u_valid

        k_in_msg = select(in_msg)
        k_out_open = select(out_open)

        def forget_kernel():
            # The bridge's own state of the selected kernel, as after power-on.
            m.d.sync += [
                Array(saved_acc)[x_kidx].eq(0), Array(saved_acc_n)[x_kidx].eq(0),
                Array(in_msg)[x_kidx].eq(0), Array(out_open)[x_kidx].eq(0),
                Array(pending)[x_kidx].eq(0),
            ]

        with m.FSM(name="execute") as exec_fsm:
            with m.State("IDLE"):
                with m.If(Mux(rbuf, full[1], full[0]) & ~seq_wait):
                    m.d.sync += [
                        x_buf.eq(rbuf), x_held.eq(1), rbuf.eq(~rbuf), fp.eq(HEADER_SIZE), hp.eq(0),
                        x_bad.eq(Mux(rbuf, d_bad[1], d_bad[0])),
                        x_too_long.eq(Mux(rbuf, d_too_long[1], d_too_long[0])),
                    ]
                    m.next = "LOAD"

            with m.State("LOAD"):
                # Word 0, the length's, then the number's, asked for in the cycle before, is
                # here; the next one is asked for.
                m.d.sync += hp.eq(hp + 1)
                m.d.comb += hdr_read.eq(1)
                word = hdr_word_in
                with m.Switch(hp):
                    with m.Case(0):
                        m.d.comb += hdr_next.eq(_LENGTH_WORD)
                        m.d.sync += [x.kernel.eq(word[8:16]), x.opcode.eq(word[16:24]),
                                     x.flags.eq(word[24:])]
                    with m.Case(1):
                        # Only what the length decides is kept: added in the logic before the
                        # flip-flops (which would hold a copy of it otherwise).
                        length = word[:16]
                        m.d.sync += [
                            x_before_last.eq(length + (HEADER_SIZE - 2)),
                            x_length_0.eq(length == 0), x_length_1.eq(length == 1),
                            x_short.eq(_below_seq(length)),
                        ]
                    with m.Case(2):
                        m.next = "KERNEL"  # the read ports hold word 1 from now on

            with m.State("KERNEL"):
                m.d.sync += [x_known.eq(0), x_op_ok.eq(0)]
                with m.Switch(x.kernel):
                    for k, (kernel_id, component) in enumerate(self.kernels):
                        with m.Case(kernel_id):
                            m.d.sync += [
                                x_known.eq(1),
                                x_kidx.eq(k),
                                x_width_m1.eq(component.width - 1),
                                x_op_ok.eq(~_at_least(x.opcode, len(component.operations))
                                           | (x.opcode == OP_RESET)),
                            ]
                m.next = "DECIDE"

            with m.State("DECIDE"):
                m.d.sync += [fp_end.eq(x_length_0), fp_last.eq(x_length_1)]
                with m.If(x_system):
                    # Unsequenced: answered at once, whatever the sequence number.
                    def answer(*args, **kwargs):
                        release_buffer()
                        respond(*args, **kwargs)
                        m.next = "IDLE"

                    with m.If(s_free):
                        with m.If(x_bad | (op_sync & x_short)):
                            answer(_Source.EMPTY, STATUS_BAD_FRAME)
                        with m.Elif(x_too_long):
                            answer(_Source.EMPTY, STATUS_TOO_LONG)
                        with m.Elif(op_manifest):
                            answer(_Source.MANIFEST, STATUS_OK,
                                   length=_SEQ_BYTES + len(self.manifest))
                        with m.Elif(op_counters):
                            answer(_Source.COUNTERS, STATUS_OK, length=self.counters_size)
                        with m.Elif(op_sync):
                            # The target replaces the sequence number in x_seq: the read ports
                            # read it now. With crc_bits 8, the number waits in b_seq, loaded in
                            # this cycle and held through the sync (the sender does not look at
                            # it while p_valid is low); below, the read ports read it back in
                            # SYNC_CHECK.
                            m.d.comb += [hdr_read.eq(1), hdr_next.eq(_TARGET_WORD)]
                            m.next = "SYNC"
                        with m.Else():
                            answer(_Source.EMPTY, STATUS_BAD_OPCODE)
                with m.Elif(seq_same):
                    # The slot about to be written must not be the one being sent.
                    with m.If(~slot_busy):
                        m.d.sync += [
                            r_length.eq(0), r_more.eq(0), r_status.eq(STATUS_OK),
                            slot_full.eq(0), slot_almost.eq(self.max_response == 1),
                        ]
                        with m.If(x_bad | x_too_long | ~x_known | ~x_op_ok):
                            release_buffer()
                            with m.If(x_bad):
                                m.d.sync += r_status.eq(STATUS_BAD_FRAME)
                            with m.Elif(x_too_long):
                                m.d.sync += r_status.eq(STATUS_TOO_LONG)
                            with m.Elif(~x_known):
                                m.d.sync += r_status.eq(STATUS_UNKNOWN_KERNEL)
                            with m.Else():
                                m.d.sync += r_status.eq(STATUS_BAD_OPCODE)
                            m.next = "FINISH"
                        if n_kernels:
                            with m.Elif(op_reset):
                                # The kernel's reset is high while FINISH answers (a cycle).
                                release_buffer()
                                forget_kernel()
                                m.d.sync += Array(k_reset)[x_kidx].eq(1)
                                m.next = "FINISH"
                            with m.Elif(x_cont & ~select(pending)):
                                release_buffer()  # nothing to collect: STATUS_OK, empty
                                m.next = "FINISH"
                            with m.Else():
                                # A continuation feeds nothing (as if its message's last beat
                                # had gone in); a new message drops what is left of an
                                # abandoned response first; a frame that continues a message
                                # whose response has ended has nothing to collect.
                                m.d.sync += [
                                    last_sent.eq(x_cont), r_error.eq(0), more_stop.eq(0),
                                    got_last.eq(k_in_msg & ~k_out_open),
                                    draining.eq(~x_cont & ~k_in_msg & k_out_open),
                                    watchdog.eq(wd_start), timed_out.eq(0),
                                    acc.eq(Array(saved_acc)[x_kidx]),
                                    acc_n.eq(Array(saved_acc_n)[x_kidx]),
                                    Array(in_msg)[x_kidx].eq(~x_cont),
                                ]
                                m.next = "RUN"
                with m.Elif(seq_kept):
                    with m.If(s_free):
                        release_buffer()
                        respond(_Source.SLOT, 0)
                        m.d.sync += b_slot.eq(x_seq[:win_bits])
                        m.d.comb += counted_replay.eq(1)
                        m.next = "IDLE"
                with m.Else():
                    with m.If(s_free):
                        release_buffer()
                        respond(_Source.VALUE, STATUS_OUT_OF_SEQUENCE, length=_SEQ_BYTES)
                        m.d.comb += counted_oos.eq(1)
                        m.next = "IDLE"

            if n_kernels:
                with m.State("RUN"):
                    m.d.comb += take.eq(has_byte & (~forms_beat | f_free))
                    with m.If(take):
                        m.d.sync += fp.eq(fp + 1)
                        with m.If(forms_beat):
                            m.d.sync += [
                                f_data.eq(placed), f_nbytes.eq(acc_n + 1),
                                f_last.eq(msg_last_byte), last_sent.eq(msg_last_byte),
                                acc.eq(0), acc_n.eq(0),
                            ]
                        with m.Else():
                            m.d.sync += [acc.eq(placed), acc_n.eq(acc_n + 1)]
                    with m.If(final_beat):
                        m.d.sync += [
                            f_data.eq(acc), f_nbytes.eq(acc_n), f_last.eq(1), last_sent.eq(1),
                            acc.eq(0), acc_n.eq(0),
                        ]
                    m.d.sync += f_valid.eq((take & forms_beat) | final_beat | (f_valid & ~k_ready))
                    with m.If(~has_byte):
                        release_buffer()

                    m.d.sync += more_stop.eq(x_more & feed_done)
                    with m.If(u_valid):
                        m.d.comb += slot_wr.en.eq(1)
                        m.d.sync += [
                            r_length.eq(r_length + 1),
                            slot_full.eq(slot_almost),
                            slot_almost.eq(r_length == self.max_response - 2),
                            u_data.eq(u_data >> 8), u_left.eq(u_left - 1),
                        ]
                        with m.If(u_left == 1):
                            m.d.sync += u_valid.eq(0)
                    with m.If(accept):
                        with m.If(draining):
                            with m.If(o_last):
                                m.d.sync += draining.eq(0)
                        with m.Else():
                            m.d.sync += [
                                u_valid.eq(o_count != 0), u_data.eq(o_data), u_left.eq(o_count),
                            ]
                            with m.If(o_last):
                                m.d.sync += [got_last.eq(1), r_error.eq(o_error)]

                    with m.If(done):
                        more = ~x_more & ~got_last
                        m.d.sync += [
                            Array(saved_acc)[x_kidx].eq(acc),
                            Array(saved_acc_n)[x_kidx].eq(acc_n),
                            Array(in_msg)[x_kidx].eq(x_more),
                            Array(out_open)[x_kidx].eq(~got_last),
                            Array(pending)[x_kidx].eq(more),
                            r_more.eq(more),
                        ]
                        with m.If(r_error):
                            m.d.sync += r_status.eq(STATUS_KERNEL_ERROR)
                        m.next = "FINISH"
                    with m.Elif(timed_out):
                        # The kernel is stuck: the watchdog went off in the cycle before, which
                        # made no progress, so nothing has changed since but that the kernel may
                        # take a beat now (nothing is collected: collect_ready is low). Its
                        # message stays open unless its last beat went in; its response stays
                        # open (to be dropped before its next message) unless it has ended, and
                        # is not pending: bytes of it were lost with this frame's.
                        release_buffer()
                        m.d.sync += [
                            f_valid.eq(0), u_valid.eq(0), draining.eq(0), timed_out.eq(0),
                            r_status.eq(STATUS_KERNEL_TIMEOUT), r_length.eq(0),
                            Array(in_msg)[x_kidx].eq(x_more | ~(last_sent & f_free)),
                            Array(out_open)[x_kidx].eq(~got_last),
                            Array(pending)[x_kidx].eq(0),
                        ]
                        m.next = "FINISH"
                    with m.Elif(progress):
                        m.d.sync += watchdog.eq(wd_start)
                    with m.Else():
                        m.d.sync += [watchdog.eq(watchdog + 1), timed_out.eq(watchdog[-1])]

            with m.State("SYNC"):
                # x_seq holds the target (since DECIDE): seq_behind is E - T, registered at the
                # end of this cycle, and T is ahead of E when E - T is from 2**31 + 1 to
                # 2**32 - 1 (seq_ahead, in SYNC_CHECK).
                release_buffer()
                m.next = "SYNC_CHECK"

            with m.State("SYNC_CHECK"):
                with m.If(seq_ahead):
                    # Numbers from before the sync must not replay: forget the window.
                    m.d.comb += e_load.eq(1)
                    m.d.sync += executed.eq(0)
                # The read ports hold the request's number again from SYNCED on (b_seq).
                m.d.comb += [hdr_read.eq(1), hdr_next.eq(_SEQ_WORD)]
                m.next = "SYNCED"

            with m.State("SYNCED"):
                # No response is pending: DECIDE waited for that, and only this FSM sets p_valid.
                respond(_Source.VALUE, STATUS_OK, length=_SEQ_BYTES)
                m.next = "IDLE"

            with m.State("FINISH"):
                with m.If(s_free):
                    release_buffer()
                    m.d.comb += [
                        meta_wr.en.eq(1),
                        meta_wr.addr.eq(target),
                        meta_wr.data.kernel.eq(x.kernel),
                        meta_wr.data.status.eq(r_status),
                        meta_wr.data.length.eq(r_length),
                        meta_wr.data.more.eq(r_more),
                    ]
                    respond(_Source.SLOT, 0)
                    m.d.comb += [e_load.eq(1), e_step.eq(1)]
                    m.d.sync += [
                        b_slot.eq(target),
                        executed.eq(Mux(executed == self.window, executed, executed + 1)),
                    ]
                    m.next = "IDLE"

        running = exec_fsm.ongoing("RUN") if n_kernels else Const(0)
        m.d.comb += [exec_idle.eq(exec_fsm.ongoing("IDLE")),
                     exec_fsm_loading.eq(exec_fsm.ongoing("LOAD"))]

        if self.crc_bits == 8:
            with m.If(s_free):
                syncing = (exec_fsm.ongoing("SYNC") | exec_fsm.ongoing("SYNC_CHECK")
                           | exec_fsm.ongoing("SYNCED"))
                with m.If(~syncing):
                    m.d.sync += b_seq.eq(x_seq)

        # Kernel ports. Beats go in from flip-flops, each with its frame's opcode. A kernel's
        # response is taken while a frame to it runs; otherwise it is held while the kernel has
        # a message or a response open, and taken and dropped when it has neither (a kernel
        # that answers out of turn cannot block itself).
        for k, (_, component) in enumerate(self.kernels):
            i, o = component.i_stream, component.o_stream
            selected = running & (x_kidx == k)
            m.d.comb += [
                i.valid.eq(f_valid & (x_kidx == k)),
                i.payload.data.eq(f_data),
                i.payload.nbytes.eq(f_nbytes),
                i.payload.last.eq(f_last),
                i.payload.error.eq(0),
                i.payload.op.eq(x.opcode),
                o.ready.eq(Mux(selected, collect_ready, ~in_msg[k] & ~out_open[k])),
            ]
            k_events[k].update(
                busy_cycles=in_msg[k],
                beats_in=i.valid & i.ready,
                beats_out=o.valid & o.ready,
                errors=o.valid & o.ready & o.payload.last & o.payload.error,
            )

        # ---- Send -------------------------------------------------------------------------

        if self.framing == "cobs":
            m.submodules.encoder = encoder = CobsEncoder()
            wiring.connect(m, encoder.o_stream, wiring.flipped(self.o_bytes))
            enc_in = encoder.i_stream
        else:
            enc_in = self.o_frames

        s_valid, s_last = Signal(), Signal()
        s_data = Signal(8)
        m.d.comb += [
            enc_in.valid.eq(s_valid),
            enc_in.payload.data.eq(s_data),
            enc_in.payload.last.eq(s_last),
        ]
        advance = ~s_valid | enc_in.ready
        with m.If(enc_in.ready):
            m.d.sync += s_valid.eq(0)

        b_crc = Signal(32)
        cnt = Signal(range(max(resp_max, HEADER_SIZE)))  # the byte being sent, in its part
        tx_byte = Signal(8)
        # As in the receiver, a byte goes through the CRC crc_bits at a time, and is sent with
        # its last part (go); the parts before it wait for nothing but the byte itself.
        s_part = Signal(range(8 // crc_k))
        s_last_part = s_part == 8 // crc_k - 1
        if crc_k < 8:
            tx_crc_next = crc_bits_step(m, b_crc, tx_byte.word_select(s_part, crc_k), "tx_crc")
        else:
            tx_crc_next = crc_byte_step(m, b_crc, tx_byte, "tx_crc")
        go = advance & s_last_part
        frame_sent = Signal()

        in_payload = Signal()
        pay_next = Mux(in_payload, Mux(go, cnt + 1, cnt), 0)
        # The meta memory's read port reads the response's meta (at b_slot) until its header
        # has gone, then, for a MANIFEST response, the payload's word at pay_next (a byte
        # of it, rom_odd, a cycle later); b_length is then the manifest's, a constant.
        rom_src = b_src == _Source.MANIFEST
        rom_read = Signal()
        rom_odd = Signal()
        m.d.sync += rom_odd.eq(pay_next[0])
        m.d.comb += [
            meta_rd.addr.eq(Mux(rom_read, manifest_base + pay_next[1:], b_slot)),
            slot_rd.addr.eq(Cat(pay_next[:slot_bits], b_slot[:win_bits])),
        ]

        # Counters: before the first byte of each word, the word is read from the bank (or, for
        # open_message, taken live); the send waits for it. The bank's rd_data holds the word
        # while its bytes go, so they are all of one reading. The read is asked for from
        # flip-flops (c_go, c_addr, set as the word before ends), since the bank compares
        # c_addr with its sweeper's position and puts its own logic behind that.
        words = []  # per payload word: its counter in the bank, or the kernel whose in_msg it is
        words += [("bank", i) for i in range(len(LINK_COUNTERS))]
        for k in range(n_kernels):
            for name in KERNEL_COUNTERS:
                if name == "open_message":
                    words.append(("open", k))
                else:
                    index = len(LINK_COUNTERS) + len(kernel_events) * k
                    words.append(("bank", index + kernel_events.index(name)))
        assert 4 * len(words) == self.counters_size
        c_have = Signal()  # the word at cnt is in bank.rd_data
        c_go = Signal()  # its read is asked for and not yet taken
        c_addr = Signal.like(bank.rd_addr)  # the counter it reads
        c_next = Signal.like(bank.rd_addr)  # the counter the next word reads
        c_open = Signal()  # the word at cnt is an open_message
        c_live = Signal()  # and its value

        def bank_index(w):  # an open_message word reads counter 0, and ignores it
            return words[w][1] if w < len(words) and words[w][0] == "bank" else 0
        m.d.comb += [bank.rd_en.eq(c_go), bank.rd_addr.eq(c_addr)]
        with m.If(bank.rd_ready):
            m.d.sync += c_go.eq(0)
        with m.Switch(cnt[2:2 + ceil_log2(len(words))]):
            for w, (kind, index) in enumerate(words):
                with m.Case(w):
                    m.d.comb += c_next.eq(bank_index(w + 1))
                    if kind == "open":
                        m.d.comb += [c_open.eq(1), c_live.eq(in_msg[index])]
        # An open_message word is 0 or 1: only its first byte can be other than 0.
        counter_byte = Mux(c_open, c_live & (cnt[:2] == 0), bank.rd_data.word_select(cnt[:2], 8))
        c_ready = c_have | bank.rd_valid
        value_byte = expected.word_select(cnt[:2], 8)

        def emit(last=0):
            m.d.sync += [s_valid.eq(1), s_data.eq(tx_byte), s_last.eq(last)]

        meta = meta_rd.data  # read at b_slot since the cycle before HEADER
        b_length = meta.length  # in HEADER
        end_length = Mux(rom_src, _SEQ_BYTES + len(self.manifest), meta.length)  # in PAYLOAD
        rom_byte = meta.as_value()[:16].word_select(rom_odd, 8)
        with m.FSM(name="send") as send_fsm:
            with m.State("IDLE"):
                with m.If(p_valid):
                    m.d.sync += [p_valid.eq(0), b_crc.eq(INIT), cnt.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                header = Array([
                    Const(LINK_VERSION, 8), meta.kernel, meta.status,
                    Mux(meta.more, FLAG_RESPONSE | FLAG_MORE, FLAG_RESPONSE),
                    *(b_seq.word_select(i, 8) for i in range(_SEQ_BYTES)),
                    b_length.as_unsigned()[:8], b_length.as_unsigned()[8:16],
                ])
                assert len(header) == HEADER_SIZE
                m.d.comb += tx_byte.eq(header[cnt[:4]])
                with m.If(~s_last_part):
                    m.d.sync += [b_crc.eq(tx_crc_next), s_part.eq(s_part + 1)]
                with m.If(go):
                    emit()
                    m.d.sync += [b_crc.eq(tx_crc_next), s_part.eq(0), cnt.eq(cnt + 1)]
                    with m.If(cnt == HEADER_SIZE - 1):
                        # The meta has been read (its data holds until the next cycle).
                        m.d.comb += rom_read.eq(rom_src)
                        m.d.sync += [
                            cnt.eq(0),
                            c_go.eq(b_src == _Source.COUNTERS), c_addr.eq(bank_index(0)),
                        ]
                        with m.If(b_length == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [in_payload.eq(1), rom_read.eq(rom_src)]
                with m.Switch(b_src):
                    with m.Case(_Source.SLOT):
                        m.d.comb += tx_byte.eq(slot_rd.data)
                    with m.Case(_Source.MANIFEST):
                        if self.manifest:
                            m.d.comb += tx_byte.eq(Mux(_below_seq(cnt), value_byte, rom_byte))
                        else:
                            m.d.comb += tx_byte.eq(value_byte)
                    with m.Case(_Source.COUNTERS):
                        m.d.comb += tx_byte.eq(counter_byte)
                    with m.Case(_Source.VALUE):
                        m.d.comb += tx_byte.eq(value_byte)
                counting = b_src == _Source.COUNTERS
                with m.If(bank.rd_valid):
                    m.d.sync += c_have.eq(1)
                with m.If(~s_last_part & (~counting | c_ready)):
                    m.d.sync += [b_crc.eq(tx_crc_next), s_part.eq(s_part + 1)]
                with m.If(go & (~counting | c_ready)):
                    emit()
                    m.d.sync += [b_crc.eq(tx_crc_next), s_part.eq(0), cnt.eq(cnt + 1)]
                    with m.If(cnt[:2] == 3):
                        m.d.sync += [c_have.eq(0), c_go.eq(counting), c_addr.eq(c_next)]
                    with m.If(cnt == end_length - 1):
                        m.d.sync += [cnt.eq(0), c_go.eq(0)]
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += tx_byte.eq((b_crc ^ XOROUT).word_select(cnt[:2], 8))
                with m.If(advance):
                    emit(last=cnt == CRC_SIZE - 1)
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == CRC_SIZE - 1):
                        m.d.comb += frame_sent.eq(1)
                        m.next = "IDLE"

        if self.crc_bits < 8:
            m.d.comb += seq_wait.eq(p_valid | (send_fsm.ongoing("HEADER")
                                               & ~_at_least(cnt, _SEQ_OFFSET + _SEQ_BYTES)))
        m.d.comb += [
            b_slot_busy.eq(~send_fsm.ongoing("IDLE")),
            s_free.eq(~p_valid & send_fsm.ongoing("IDLE")),
        ]

        # ---- Counters ---------------------------------------------------------------------

        events = {
            "frames_in": rx_good,
            "bad_crc": rx_bad,
            "timeouts": flush,
            "replays": counted_replay,
            "out_of_sequence": counted_oos,
            "frames_out": frame_sent,
        }
        assert set(events) == set(LINK_COUNTERS), "a link counter has no event"
        incs = [events[name] for name in LINK_COUNTERS]
        for k_event in k_events:
            assert set(k_event) == set(kernel_events), "a kernel counter has no event"
            incs += [k_event[name] for name in kernel_events]
        # Each event (the end of a long path of its own: the receiver's CRC check, a kernel's
        # handshake) goes straight to the enables of its count's low bits in the bank, through
        # no gate: it ends at flip-flops as it would in a register of its own. A read sees an
        # event a cycle after it, and every event comes further ahead of anything that could
        # read its counter and see it: that takes a frame to go in, or one to go out.
        m.d.comb += bank.inc.eq(Cat(incs))

        return m
