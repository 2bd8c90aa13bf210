"""Varint: protobuf's base-128 varints, the CPU path, the request codec, the workload.

Protobuf writes an integer field as a varint: the value's 7-bit groups, least significant
first, each in a byte whose top bit says whether another follows. An ``int64``/``uint64`` is
the varint of the value as a uint64 (so -1 is ten bytes, ``ff ff ff ff ff ff ff ff ff 01``); a
``sint64`` is the varint of its *zigzag* (0, -1, 1, -2, ... to 0, 1, 2, 3, ...). This is not
signed LEB128.

The kernel has two operations, each one message per call:

``encode`` (opcode 0)
    A flags byte (bit 0: zigzag), then the values as u64 LE, 8 bytes each. Answers their
    varints, concatenated, as protobuf packs a repeated field.
``decode`` (opcode 1)
    A flags byte, then varints. Answers their values as u64 LE (unzigzagged with the flag).

Calls::

    dev.varint.encode(300)                     # -> b"\\xac\\x02"
    dev.varint.encode([1, -1], signed=True)    # -> b"\\x02\\x01" (zigzag)
    dev.varint.encode(np.arange(10))           # -> 10 bytes
    dev.varint.decode(b"\\xac\\x02\\x01")        # -> [300, 1]
    dev.varint.decode(b"\\x01", signed=True)     # -> [-1]

``signed=False`` takes -2**63 to 2**64 - 1 (a negative value as its two's complement, as
protobuf's ``int64``) and decodes to 0 to 2**64 - 1; ``signed=True`` takes and gives
-2**63 to 2**63 - 1.

``decode`` refuses, with a :class:`~offload.KernelError`, a varint longer than 10 bytes, one
whose 10th byte is above 0x01 (more than 64 bits), and one the input ends inside; the kernel
answers every value before the bad varint and drops the rest. Protobuf's Python decoder takes
a 10th byte above 0x01 and drops the bits beyond 64; this kernel does not.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Mapping, Sequence

import numpy as np

from . import KernelSpec, Operation, Response
from ._bytes import as_bytes

__all__ = ["SPEC", "VarintModel", "FLAG_ZIGZAG", "MAX_VARINT", "scan", "varint_bytes"]

#: Bit of the request's flags byte that asks for zigzag (sint64).
FLAG_ZIGZAG = 0x01
#: The most bytes a varint of a uint64 takes.
MAX_VARINT = 10

_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1

# Items the gateware holds between taking a request byte and sending the last response byte of
# it: one in its input register, one in its output register.
_IN_FLIGHT = 2


# -- varints on the CPU ----------------------------------------------------------------------

def varint_bytes(values: np.ndarray) -> bytes:
    """The varints of ``values`` (uint64), concatenated."""
    values = np.asarray(values, dtype=np.uint64)
    if not values.size:
        return b""
    shifts = np.arange(MAX_VARINT, dtype=np.uint64) * np.uint64(7)
    # Group j of each value (its bits 7j to 7j + 6), and how many groups each value needs.
    groups = (values[:, None] >> shifts[None, :]) & np.uint64(0x7F)
    rest = values[:, None] >> shifts[None, :]
    length = np.maximum(1, np.count_nonzero(rest, axis=1))
    j = np.arange(MAX_VARINT)[None, :]
    out = groups.astype(np.uint8) | np.where(j < length[:, None] - 1, 0x80, 0).astype(np.uint8)
    return out[j < length[:, None]].tobytes()


def scan(data: bytes) -> tuple[int, str | None, int]:
    """Where the varints of ``data`` go wrong, as the gateware sees it.

    Returns ``(count, problem, at)``: how many varints are good before the first bad one (all
    of them if none is), and for the bad one what is wrong (``"long"``, ``"high"``, ``"cut"``,
    or ``None``) and the offset of its first byte in ``data``.
    """
    d = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(d < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))[:len(ends)]
    length = ends - starts + 1
    bad = (length > MAX_VARINT) | ((length == MAX_VARINT) & (d[ends] > 0x01))
    first = np.flatnonzero(bad)
    if first.size:
        n = int(first[0])
        return n, "long" if length[n] > MAX_VARINT else "high", int(starts[n])
    tail = int(ends[-1]) + 1 if ends.size else 0
    if len(d) - tail >= MAX_VARINT:  # the 10th byte has its top bit set
        return len(ends), "long", tail
    if len(d) > tail:
        return len(ends), "cut", tail
    return len(ends), None, 0


def _decode_varints(data: bytes, count: int) -> np.ndarray:
    # The first ``count`` varints of ``data`` (each good) as uint64.
    d = np.frombuffer(data, dtype=np.uint8)
    if not count:
        return np.zeros(0, dtype=np.uint64)
    ends = np.flatnonzero(d < 0x80)[:count]
    d = d[:ends[-1] + 1]
    starts = np.concatenate(([0], ends[:-1] + 1))
    # Each byte's place in its varint: its offset from the varint's first byte.
    place = np.arange(len(d)) - np.repeat(starts, ends - starts + 1)
    part = (d & 0x7F).astype(np.uint64) << (place.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(part, starts)  # the groups' bits do not overlap: + is |


def _zigzag(values: np.ndarray) -> np.ndarray:
    # (n << 1) ^ (n >> 63), n read as an int64.
    return (values << np.uint64(1)) ^ (np.uint64(0) - (values >> np.uint64(63)))


def _unzigzag(values: np.ndarray) -> np.ndarray:
    # (z >> 1) ^ -(z & 1)
    return (values >> np.uint64(1)) ^ (np.uint64(0) - (values & np.uint64(1)))


class VarintModel:
    """The CPU path, byte for byte the gateware's (see :mod:`hdl.kernels.varint`)."""

    def __init__(self, params: Mapping[str, int]):
        self.params = params

    def reset(self) -> None:
        pass

    def run(self, op: str, request: bytes) -> Response:
        if op not in ("encode", "decode"):  # the gateware's answer to an opcode it lacks
            return Response(b"", error=True)
        if not request:
            return Response(b"")
        zigzag = bool(request[0] & FLAG_ZIGZAG)
        body = request[1:]
        if op == "encode":
            whole = len(body) - len(body) % 8
            values = np.frombuffer(body[:whole], dtype="<u8").astype(np.uint64)
            if zigzag:
                values = _zigzag(values)
            return Response(varint_bytes(values), error=whole != len(body))
        count, problem, _ = scan(body)
        values = _decode_varints(body, count)
        if zigzag:
            values = _unzigzag(values)
        return Response(values.astype("<u8").tobytes(), error=problem is not None)


# -- the codec -------------------------------------------------------------------------------

def _flags(signed: object) -> bytes:
    if not isinstance(signed, bool):
        raise TypeError(f"varint signed must be True or False, not {signed!r}")
    return bytes([FLAG_ZIGZAG if signed else 0])


def _range(signed: bool) -> tuple[int, int]:
    return (_I64_MIN, _I64_MAX) if signed else (_I64_MIN, _U64)


def _is_batch(values: object) -> bool:
    return isinstance(values, (list, tuple, np.ndarray))


def _int(value: object, signed: bool, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"varint {what} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"varint {what} must be an integer, not "
                        f"{type(value).__name__}") from None
    low, high = _range(signed)
    if not low <= value <= high:
        kind = "int64 (signed=True)" if signed else "uint64, or int64 for a negative value"
        raise ValueError(f"varint {what} must fit a {kind}: {low} to {high}, not {value}")
    return value & _U64


def _as_u64(values: object, signed: bool) -> np.ndarray:
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise TypeError(f"varint values must be a 1-D integer numpy array, not one of dtype "
                            f"{values.dtype} and {values.ndim} dimension(s)")
        if signed and values.dtype == np.uint64 and values.size and \
                int(values.max()) > _I64_MAX:
            raise ValueError(f"varint values must fit an int64 (signed=True); the array holds "
                             f"{int(values.max())}")
        return values.astype(np.uint64)  # an int64's two's complement, as protobuf's int64
    if _is_batch(values):
        return np.array([_int(v, signed, f"value {n}") for n, v in enumerate(values)],
                        dtype=np.uint64)
    return np.array([_int(values, signed, "value")], dtype=np.uint64)


def encode_encode(params, values, signed: bool = False) -> list[bytes]:
    """``encode(values, signed=False)``: one message, the flags and the values as u64 LE."""
    flags = _flags(signed)
    return [flags + _as_u64(values, signed).astype("<u8").tobytes()]


def decode_encode(params, responses: Sequence[bytes], values, signed: bool = False) -> bytes:
    (response,) = responses
    count = len(encode_encode(params, values, signed)[0]) // 8
    if not count <= len(response) <= MAX_VARINT * count:
        raise ValueError(f"varint.encode of {count} values answered {len(response)} bytes")
    return bytes(response)


def encode_decode(params, data, signed: bool = False) -> list[bytes]:
    """``decode(data, signed=False)``: one message, the flags and the varints."""
    return [_flags(signed) + as_bytes(data)]


def decode_decode(params, responses: Sequence[bytes], data, signed: bool = False) -> list[int]:
    (response,) = responses
    if len(response) % 8:
        raise ValueError(f"varint.decode answered {len(response)} bytes, not whole u64s")
    values = np.frombuffer(response, dtype="<u8")
    return (values.view("<i8") if signed else values).tolist()


_PROBLEMS = {
    "long": "is longer than 10 bytes",
    "high": "has a 10th byte above 0x01",
    "cut": "is cut short at the end of the input",
}


def error_decode(params, response: Response, data, signed: bool = False) -> str:
    # The same text whichever device answered: made from the request, not the answer.
    _, problem, at = scan(as_bytes(data))
    if problem is None:
        return "malformed request"
    return f"varint at byte {at} {_PROBLEMS[problem]}"


def error_encode(params, response: Response, *args, **kwargs) -> str:
    # The codec sends whole values; only a raw request can end inside one.
    return "the values of an encode request are not a whole number of 8 bytes"


# -- the bench and the HIL suite -------------------------------------------------------------

def workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
    """An encode of ``size // 8`` values (at least one) of every varint length."""
    values = [rng.getrandbits(rng.randint(1, 64)) for _ in range(max(1, size // 8))]
    return "encode", (values,)


def strategies(params) -> dict:
    from hypothesis import strategies as st

    def sized(low: int, high: int):
        # Values of every bit length, so of every varint length from 1 to 10 bytes.
        return st.integers(0, 64).flatmap(
            lambda bits: st.integers(max(low, -(1 << bits)), min(high, (1 << bits) - 1)))

    unsigned, signed = sized(_I64_MIN, _U64), sized(_I64_MIN, _I64_MAX)

    def calls(value):
        return st.one_of(value, st.lists(value, max_size=40))

    encode = st.one_of(calls(unsigned).map(lambda v: (v,)),
                       calls(signed).map(lambda v: (v, True)))
    # Good encodings (now and then cut short or with junk after), and random bytes, so that
    # every error occurs as well.
    good = st.lists(sized(0, _U64), max_size=40).map(
        lambda v: varint_bytes(np.array(v, dtype=np.uint64)))
    data = st.one_of(good, st.tuples(good, st.binary(max_size=12)).map(lambda t: t[0] + t[1]),
                     good.map(lambda b: b[:-1]), st.binary(max_size=60))
    decode = st.tuples(data, st.booleans())
    return {"encode": encode, "decode": decode}


SPEC = KernelSpec(
    name="varint", id=2, version=1,
    summary="protobuf varints: encode integers (zigzag with signed=True), decode them",
    gateware="hdl.kernels.varint:VarintKernel",
    model=VarintModel,
    operations=(
        # A value of 8 bytes is at most 10; each item held back is at most 10, and a value
        # begun in one frame (7 bytes) may be answered in the next.
        Operation("encode", encode_encode, decode_encode,
                  max_response=lambda params, n: MAX_VARINT * (max(0, n - 1) // 8),
                  error=error_encode, expansion=MAX_VARINT / 8,
                  holdback=MAX_VARINT * _IN_FLIGHT + -(-7 * MAX_VARINT // 8),
                  doc="integers to varints, concatenated"),
        # A varint of 1 byte is a value of 8; a varint's value comes only with its last byte,
        # so only the items in flight are held back.
        Operation("decode", encode_decode, decode_decode,
                  max_response=lambda params, n: 8 * max(0, n - 1),
                  error=error_decode, expansion=8.0, holdback=8 * _IN_FLIGHT,
                  doc="varints to integers"),
    ),
    workload=workload, strategies=strategies,
)
