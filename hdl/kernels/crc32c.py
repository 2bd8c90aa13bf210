"""CRC-32C (Castagnoli) over a byte stream, ``width`` bytes per cycle.

The CRC is linear over GF(2): after a beat of ``k`` bytes the register is ``A_k(s) ^ D_k(d)``,
where ``s`` is the register before the beat and ``d`` the beat's data. The only loop in the
design is ``s <- A_W(s) ^ D_W(d)``, and ``D_W(d)`` does not depend on ``s``, so it is computed a
cycle ahead; the loop is then one XOR tree of at most 33 inputs per bit. The last beat of a
message, which may hold 0 to ``width`` bytes, never enters the loop: its state is handed to a
two-stage finishing pipeline that computes all ``width + 1`` candidate endings and picks one,
while the loop register restarts for the next message in the very next cycle.

Each GF(2) row is written as ``(x & mask).xor()`` with the mask held in a register that never
changes (reset-less, fed back to itself). Verilator then computes every row with full-word
AND and parity instructions instead of one operation per bit, which runs several times faster;
Yosys sees a flip-flop whose input is its own output and folds it into a constant, so the
synthesised logic is the same as with a constant mask.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..queue import RegisterQueue, count_up_down
from ..stream import WIDTHS, byte_stream, request_stream

__all__ = ["Crc32cKernel", "POLY", "INIT", "XOROUT", "crc32c_ref", "crc_matrices", "crc_update",
           "gf2_apply", "crc_bit_rows", "crc_bits_step", "crc_byte_step"]

#: CRC-32C polynomial, bit-reversed (the form that processes the least significant bit first).
POLY = 0x82F63B78
INIT = 0xFFFFFFFF
XOROUT = 0xFFFFFFFF


def crc_update(state: int, data: bytes, poly: int = POLY) -> int:
    """A reflected 32-bit CRC register (``poly`` bit-reversed) after ``data``, bit by bit:
    the plain definition. CRC-32C by default; Ethernet's CRC-32 (``hdl.eth.crc32``) too."""
    for byte in data:
        state ^= byte
        for _ in range(8):
            state = (state >> 1) ^ (poly if state & 1 else 0)
    return state


def crc32c_ref(data: bytes) -> int:
    """Bit-serial CRC-32C, the plain definition the gateware's matrices are derived from."""
    return crc_update(INIT, bytes(data)) ^ XOROUT


def crc_matrices(nbytes: int, poly: int = POLY) -> tuple[list[int], list[int]]:
    """Rows of ``A`` (over the 32 state bits) and ``D`` (over ``8 * nbytes`` data bits).

    Bit ``i`` of row ``o`` says whether input bit ``i`` contributes to output bit ``o``. Data
    bit ``8 * j + b`` is bit ``b`` of the ``j``-th byte of the beat.
    """
    zeros = bytes(nbytes)
    a_cols = [crc_update(1 << i, zeros, poly) for i in range(32)]
    d_cols = [crc_update(0, (1 << i).to_bytes(nbytes, "little"), poly)
              for i in range(8 * nbytes)]

    def rows(cols):
        return [sum(((col >> o) & 1) << i for i, col in enumerate(cols)) for o in range(32)]

    return rows(a_cols), rows(d_cols)


def gf2_apply(m: Module, x, rows: list[int], name: str):
    """``M x`` over GF(2), each row as a parity of ``x`` under a constant-valued mask register.

    Bit ``i`` of ``rows[o]`` says whether bit ``i`` of ``x`` contributes to output bit ``o``.
    See the module documentation for why the mask is a register.
    """
    if len(x) == 0:
        return Const(0, 32)
    bits = []
    for o, row in enumerate(rows):
        mask = Signal(len(x), init=row, reset_less=True, name=f"{name}_mask{o}")
        m.d.sync += mask.eq(mask)
        bits.append((x & mask).xor())
    return Cat(*bits)


def crc_bit_rows(nbits: int, poly: int = POLY) -> list[int]:
    """Rows of the GF(2) map from the register and ``nbits`` data bits (least significant
    first, as a reflected CRC takes a byte's bits) to the register after them: bit ``i`` of row
    ``o`` says whether bit ``i`` of ``Cat(state, bits)`` contributes to output bit ``o``."""

    def update(state: int, data: int) -> int:
        for i in range(nbits):
            state = (state >> 1) ^ (poly if (state ^ (data >> i)) & 1 else 0)
        return state

    cols = [update(1 << i, 0) for i in range(32)] + [update(0, 1 << i) for i in range(nbits)]
    return [sum(((col >> o) & 1) << i for i, col in enumerate(cols)) for o in range(32)]


def crc_bits_step(m: Module, state, bits, name: str):
    """The CRC-32C register after ``len(bits)`` more data bits, least significant first: a
    byte's in 8 / k steps of ``k`` bits (a quarter of a byte's step's logic at ``k == 2``)."""
    return gf2_apply(m, Cat(state, bits), crc_bit_rows(len(bits)), name)


def crc_byte_step(m: Module, state, byte, name: str):
    """The CRC-32C register after one more ``byte``: ``A state ^ D byte`` as one GF(2) map."""
    a_rows, d_rows = crc_matrices(1)
    return gf2_apply(m, Cat(state, byte), [a | (d << 32) for a, d in zip(a_rows, d_rows,
                                                                        strict=True)], name)


class Crc32cKernel(wiring.Component):
    """CRC-32C of each message on ``i_stream``, as one response on ``o_stream``.

    The response is the four CRC bytes, least significant first: four beats when ``width`` is
    1, two when it is 2, and one beat of ``nbytes == 4`` when it is 4 or 8. A last beat whose
    ``nbytes`` is greater than ``width`` is malformed: the response still comes, with ``error``
    set, its CRC taken as though the beat were full.

    Input is accepted every cycle (one beat per cycle, no gap between messages) while the
    response queue has room for every message begun; it fills only when responses are not
    taken, or when messages are shorter than their responses.

    Parameters
    ----------
    width : int
        Bytes per beat, one of 1, 2, 4, 8.

    Members
    -------
    i_stream : ``In(request_stream(width))``
        Messages. The kernel has one operation, so it ignores ``op``.
    o_stream : ``Out(byte_stream(width))``
        One CRC per message.
    """

    #: The kernel's one operation (opcode 0, OP_CALL).
    operations = ("call",)

    #: Cycles from a last beat being accepted to its result entering the response queue.
    LATENCY = 5

    def __init__(self, width: int = 4):
        # An object whose construction failed was never meant to be used: no warning for it.
        self._MustUse__silence = True
        if not isinstance(width, int) or isinstance(width, bool):
            raise TypeError(f"Crc32cKernel width must be an integer, not {width!r}")
        if width not in WIDTHS:
            raise ValueError(f"Crc32cKernel width must be one of {WIDTHS} bytes, not {width!r}")
        self.width = width
        # Results queued: enough that credits never hold the input back while the output keeps
        # up. A result's slot comes back LATENCY + 2 cycles after its last beat was taken (one
        # more below four bytes a beat, see elaborate), and the output takes a result every
        # cycle at four bytes a beat, or every ``4 // width + 1`` cycles below. A smaller queue
        # is faster on an iCE40: at one byte a beat, two slots put the kernel at 83-90 MHz
        # where four gave 69-88, at the cost of 5.5 cycles instead of 5 for a stream of 4-byte
        # messages (measured in the harness; other lengths run at their ideal rate). (A power
        # of two, so the pointers wrap without a comparator.)
        beats = 4 // width
        round_trip = self.LATENCY + (2 if beats <= 1 else 3)
        per_result = 1 if beats <= 1 else beats + 1
        self.queue_depth = 1 << (-(-round_trip // per_result) - 1).bit_length()
        self._MustUse__silence = False
        super().__init__({
            "i_stream": In(request_stream(width)),
            "o_stream": Out(byte_stream(width)),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.width

        depth = self.queue_depth
        m.submodules.queue = queue = RegisterQueue(33, depth)

        # Credits: one per queue slot, taken when a message's last beat is accepted and given
        # back when its result leaves the queue, so the pipeline never stalls and the queue
        # never overflows. Ready is a flip-flop: deriving it from the queue's level instead
        # put the level's adder and a comparator in front of every input register, and that
        # was the slowest path of the design on the iCE40.
        credits = Signal(range(depth + 1), init=depth)
        accept = self.i_stream.valid & self.i_stream.ready
        taken = accept & self.i_stream.payload.last
        given = Signal()  # a result leaves the queue (see below)
        m.d.comb += self.i_stream.ready.eq(count_up_down(m, credits, given, taken))

        # Stage 0: register the input.
        # Only the valid bits, the loop state and the flow control are reset. Data registers
        # are not: a reset on them costs an enable term on every one of them on the iCE40,
        # whose flip-flops apply a synchronous reset only when enabled.
        v0 = Signal()
        l0 = Signal(reset_less=True)
        d0 = Signal(8 * w, reset_less=True)
        n0 = Signal(len(self.i_stream.payload.nbytes), reset_less=True)
        m.d.sync += v0.eq(accept)
        with m.If(accept):
            m.d.sync += [
                d0.eq(self.i_stream.payload.data),
                n0.eq(self.i_stream.payload.nbytes),
                l0.eq(self.i_stream.payload.last),
            ]

        a_full, d_full = crc_matrices(w)

        # Stage 1: the data's contribution to a full beat, ahead of the loop.
        v1, l1 = Signal(), Signal(reset_less=True)
        d1, dd1 = Signal(8 * w, reset_less=True), Signal(32, reset_less=True)
        n1 = Signal.like(n0, reset_less=True)
        m.d.sync += [
            v1.eq(v0), l1.eq(l0), d1.eq(d0), n1.eq(n0),
            dd1.eq(gf2_apply(m, d0, d_full, "dfull")),
        ]

        # Stage 2: the loop. A last beat hands the state to the finishing stages instead.
        state = Signal(32, init=INIT)
        v2 = Signal()
        s2, d2 = Signal(32, reset_less=True), Signal(8 * w, reset_less=True)
        n2 = Signal.like(n0, reset_less=True)
        # The mask registers are made outside any condition, so that their self-loops stay
        # plain ``q <= q`` and the simulation harness can drop them (see sim.verilog).
        stepped = gf2_apply(m, state, a_full, "loop") ^ dd1
        # s2, d2 and n2 are loaded every cycle and used only when v2 says they hold a last beat:
        # an enable on them would be a high-fanout net one LUT from the input registers.
        m.d.sync += [v2.eq(v1 & l1), s2.eq(state), d2.eq(d1), n2.eq(n1)]
        with m.If(v1):
            m.d.sync += state.eq(Mux(l1, INIT, stepped))

        # Stage 3: every possible ending, 0 to w bytes, in its two halves.
        v3, err3 = Signal(), Signal(reset_less=True)
        n3 = Signal.like(n0, reset_less=True)
        s_parts = [Signal(32, name=f"s3_{k}", reset_less=True) for k in range(w + 1)]
        d_parts = [Signal(32, name=f"d3_{k}", reset_less=True) for k in range(w + 1)]
        m.d.sync += v3.eq(v2)
        with m.If(v2):
            m.d.sync += [n3.eq(n2), err3.eq(n2 > w)]
        # Loaded only when a message ends: in hardware a clock enable, and in Verilator most
        # of the kernel's XOR trees are then not evaluated on cycles in the middle of a message.
        for k in range(w + 1):
            a_k, d_k = crc_matrices(k)
            s_next = gf2_apply(m, s2, a_k, f"fin{k}a") if k else s2
            d_next = gf2_apply(m, d2[:8 * k], d_k, f"fin{k}d")
            with m.If(v2):
                m.d.sync += [s_parts[k].eq(s_next), d_parts[k].eq(d_next)]

        # Stage 4: pick the ending the beat had (a malformed count is taken as a full beat).
        v4, err4 = Signal(), Signal(reset_less=True)
        crc4 = Signal(32, reset_less=True)
        m.d.sync += [v4.eq(v3), err4.eq(err3)]
        with m.If(v3):
            with m.Switch(n3):
                for k in range(w):
                    with m.Case(k):
                        m.d.sync += crc4.eq(s_parts[k] ^ d_parts[k] ^ XOROUT)
                with m.Default():
                    m.d.sync += crc4.eq(s_parts[w] ^ d_parts[w] ^ XOROUT)

        m.d.comb += [
            queue.w_en.eq(v4),
            queue.w_data.eq(Cat(crc4, err4)),
        ]

        # Response: the CRC's four bytes, least significant first, over 4 // w beats, from a
        # shift register loaded from the queue. The register keeps the queue's read logic
        # off the output, whose beat count would otherwise sit in front of the queue's pointers.
        beats = max(1, 4 // w)
        o = self.o_stream
        s_valid = Signal()
        s_last, s_error = Signal(reset_less=True), Signal(reset_less=True)
        s_data = Signal(32, reset_less=True)
        s_left = Signal(range(beats), reset_less=True)
        if beats == 1:
            load = queue.r_rdy & (~s_valid | o.ready)
            shift = Const(0)
            s_valid_next = queue.r_rdy | (s_valid & ~o.ready)
        else:
            # Several beats a result: the register loads only once empty, which costs one idle
            # output cycle per result but keeps ``o.ready`` out of the load decision. Each
            # control flip-flop below is then one LUT of four flip-flop outputs and o.ready (on
            # an iCE40 the eager form, with enables built from enables, was the slowest path).
            # Only messages shorter than their responses, whose output is the bottleneck
            # anyway, see the gap.
            load = queue.r_rdy & ~s_valid
            shift = s_valid & o.ready & ~s_last
            s_valid_next = Mux(s_valid, ~(o.ready & s_last), queue.r_rdy)
        m.d.comb += [
            queue.r_en.eq(load),
            o.valid.eq(s_valid),
            o.payload.data.eq(s_data[:8 * w] if w < 4 else s_data),
            o.payload.nbytes.eq(min(w, 4)),
            o.payload.last.eq(s_last),
            o.payload.error.eq(s_error & s_last),
        ]
        m.d.sync += s_valid.eq(s_valid_next)
        if beats == 1:
            m.d.comb += given.eq(load)
        else:
            # A cycle late, so that the credit count's enable is one LUT from flip-flops and
            # the input handshake (an iCE40 path); the output, not credits, limits these widths.
            m.d.sync += given.eq(load)
        with m.If(load):
            m.d.sync += [
                s_data.eq(queue.r_data[:32]), s_error.eq(queue.r_data[32]),
                s_last.eq(beats == 1), s_left.eq(beats - 1),
            ]
        with m.Elif(shift):
            m.d.sync += [
                s_data.eq(s_data >> (8 * w)), s_left.eq(s_left - 1), s_last.eq(s_left == 1),
            ]

        return m

