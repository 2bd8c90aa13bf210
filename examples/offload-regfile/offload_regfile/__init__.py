"""A register file on the offload platform: the host module of the ``regfile`` kernel.

This package is the example of a kernel written outside offload. Its three parts are this
module (the :class:`~offload.kernels.KernelSpec`: the request codec, the CPU model, the bench
workload and the HIL strategies), :mod:`offload_regfile.gateware` (the Amaranth component) and
its tests. offload finds it through the ``offload.kernels`` entry point in ``pyproject.toml``::

    [project.entry-points."offload.kernels"]
    regfile = "offload_regfile:SPEC"

The kernel keeps ``slots`` 32-bit registers, all 0 after power-on and after
``device.reset("regfile")``. It has two operations, each of which streams a batch of records
(one message per call, however many records it holds):

``write`` (opcode 0)
    Records of 6 bytes, ``index`` (u16 LE) then ``value`` (u32 LE). Each stores ``value`` and
    is answered with 6 bytes: ``index`` and the register's *old* value. Records of a message
    take effect in order, so a later record sees an earlier one's value.
``read`` (opcode 1)
    Records of 2 bytes, ``index`` (u16 LE), each answered with 6 bytes: ``index``, ``value``.

A record whose index is ``slots`` or more is answered ``(index, 0)``, writes nothing, and the
message's response ends with the ``error`` flag; so does a message that is not a whole number
of records, whose trailing partial record is ignored (it can only come from a raw request: the
codec below always sends whole records). The call then raises a ``KernelError`` whose text is
made here, from the call's arguments, so that the CPU path and the gateware say the same.

Calls::

    dev.regfile.write(3, 0xDEADBEEF)          # -> the old value of register 3, an int
    dev.regfile.write([(3, 1), (4, 2)])       # -> [old 3, old 4]
    dev.regfile.write(records)                # numpy, fields index and value -> uint32 array
    dev.regfile.read(3)                       # -> an int
    dev.regfile.read([3, 4])                  # -> a list (a numpy array -> a uint32 array)
"""

from __future__ import annotations

import operator
import random
from collections.abc import Mapping, Sequence

import numpy as np
from offload.kernels import KernelSpec, Operation, Param, Response

__all__ = ["SPEC", "RegfileModel", "RECORD", "ANSWER", "RESPONSE_QUEUE", "RECORD_DTYPE"]

#: Request record size of each operation, in bytes (opcode order: write is 0, read is 1).
RECORD = {"write": 6, "read": 2}
#: Every record, of either operation, is answered with ``index`` (u16 LE), ``value`` (u32 LE).
ANSWER = 6
#: Answers the gateware has in flight between taking a record's last byte and handing the
#: answer to its output register (its pipeline and response queue). With the output register,
#: this bounds what it holds back; see :func:`_holdback`.
RESPONSE_QUEUE = 2
#: The wire format of a write record, as a numpy dtype (packed: 6 bytes).
RECORD_DTYPE = np.dtype([("index", "<u2"), ("value", "<u4")])

_INDEX_MAX = 0xFFFF
_VALUE_MAX = 0xFFFF_FFFF


def _holdback(op: str) -> int:
    # The response bytes the kernel may owe, beyond ``expansion`` per request byte taken, when
    # a frame's last byte has gone in: the answers in flight (RESPONSE_QUEUE of them, and one in
    # the output register) and the share of a record begun but not complete (a record is
    # answered only once whole, since a partial one is not answered at all).
    expansion = ANSWER / RECORD[op]
    return ANSWER * (RESPONSE_QUEUE + 1) + round((RECORD[op] - 1) * expansion)


# -- the CPU path ----------------------------------------------------------------------------

class RegfileModel:
    """The CPU path of the register file, byte for byte the gateware's.

    Parameters
    ----------
    params : mapping
        The kernel's parameters; ``slots`` is the number of registers.
    """

    def __init__(self, params: Mapping[str, int]):
        self.slots = int(params["slots"])
        self.registers = np.zeros(self.slots, dtype=np.uint32)

    def reset(self) -> None:
        self.registers[:] = 0

    def run(self, op: str, request: bytes) -> Response:
        size = RECORD.get(op)
        if size is None:  # the gateware's answer to an opcode it does not have
            return Response(b"", error=True)
        whole = len(request) - len(request) % size
        error = whole != len(request)
        if op == "write":
            records = np.frombuffer(request[:whole], dtype=RECORD_DTYPE)
            index, value = records["index"], records["value"]
        else:
            index, value = np.frombuffer(request[:whole], dtype="<u2"), None
        ok = index < self.slots
        error |= not ok.all()
        answer = np.zeros(len(index), dtype=RECORD_DTYPE)
        answer["index"] = index
        answer["value"][ok] = self.registers[index[ok]]
        if value is not None:
            self._write(index[ok], value[ok], answer["value"], np.flatnonzero(ok))
        return Response(answer.tobytes(), error)

    def _write(self, index: np.ndarray, value: np.ndarray, old: np.ndarray,
               where: np.ndarray) -> None:
        # Records take effect in order: a record that writes a register an earlier record of
        # the same message wrote sees that record's value as the old one. Sorted by register
        # (stably, so each register's records stay in message order), a record's old value is
        # its predecessor's value wherever the predecessor wrote the same register, and the
        # last record of each register is the one that stays.
        if not index.size:
            return
        order = np.argsort(index, kind="stable")
        index, value, where = index[order], value[order], where[order]
        same = index[1:] == index[:-1]
        old[where[1:][same]] = value[:-1][same]
        last = np.append(~same, True)
        self.registers[index[last]] = value[last]


# -- the codec -------------------------------------------------------------------------------

def _int(value: object, what: str, high: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"regfile {what} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"regfile {what} must be an integer, not "
                        f"{type(value).__name__}") from None
    if not 0 <= value <= high:
        raise ValueError(f"regfile {what} must be from 0 to {high}, not {value}")
    return value


def _check_array(array: np.ndarray, what: str, high: int) -> np.ndarray:
    if array.dtype.kind not in "iu":
        raise TypeError(f"regfile {what} must be integers, not a numpy array of dtype "
                        f"{array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > high):
        raise ValueError(f"regfile {what} must be from 0 to {high}; the array holds "
                         f"{int(array.min())} to {int(array.max())}")
    return array


def _is_batch(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def encode_write(params, records, value=None) -> list[bytes]:
    """``write(index, value)`` or ``write(records)``: one message of 6-byte records."""
    if value is not None or not _is_batch(records):
        if value is None:
            raise TypeError("regfile.write takes an index and a value, or a list of "
                            "(index, value) pairs, or a numpy array with fields index and value")
        record = (_int(records, "index", _INDEX_MAX), _int(value, "value", _VALUE_MAX))
        return [np.array([record], dtype=RECORD_DTYPE).tobytes()]
    if isinstance(records, np.ndarray):
        if records.dtype.names is None or not {"index", "value"} <= set(records.dtype.names) \
                or records.ndim != 1:
            raise TypeError("regfile.write takes a 1-D numpy array with fields index and value, "
                            f"not one of dtype {records.dtype} and {records.ndim} dimension(s)")
        out = np.empty(len(records), dtype=RECORD_DTYPE)
        out["index"] = _check_array(records["index"], "index", _INDEX_MAX)
        out["value"] = _check_array(records["value"], "value", _VALUE_MAX)
        return [out.tobytes()]
    pairs = []
    for number, record in enumerate(records):
        if not isinstance(record, (tuple, list)) or len(record) != 2:
            raise TypeError(f"regfile.write record {number} must be an (index, value) pair, "
                            f"not {record!r}")
        pairs.append((_int(record[0], f"index (record {number})", _INDEX_MAX),
                      _int(record[1], f"value (record {number})", _VALUE_MAX)))
    return [np.array(pairs, dtype=RECORD_DTYPE).tobytes()]


def encode_read(params, indices) -> list[bytes]:
    """``read(index)`` or ``read(indices)``: one message of 2-byte records."""
    if isinstance(indices, np.ndarray):
        if indices.ndim != 1:
            raise TypeError(f"regfile.read takes a 1-D array of indices, not one of "
                            f"{indices.ndim} dimension(s)")
        return [_check_array(indices, "index", _INDEX_MAX).astype("<u2").tobytes()]
    if _is_batch(indices):
        checked = [_int(i, f"index (record {n})", _INDEX_MAX) for n, i in enumerate(indices)]
    else:
        checked = [_int(indices, "index", _INDEX_MAX)]
    return [np.array(checked, dtype="<u2").tobytes()]


def _answers(responses: Sequence[bytes], request: bytes, op: str) -> np.ndarray:
    # A response is the request's records answered in order, the index echoed: anything else
    # is not this kernel's answer (ValueError, which the device takes as a broken link).
    (response,) = responses
    count = len(request) // RECORD[op]
    if len(response) != ANSWER * count:
        raise ValueError(f"regfile.{op} of {count} records answered {len(response)} bytes, "
                         f"not {ANSWER * count}")
    answers = np.frombuffer(response, dtype=RECORD_DTYPE)
    sent = (np.frombuffer(request, dtype=RECORD_DTYPE)["index"] if op == "write"
            else np.frombuffer(request, dtype="<u2"))
    if not np.array_equal(answers["index"], sent):
        raise ValueError(f"regfile.{op} answered for other registers than it was asked")
    return answers["value"]


def decode_write(params, responses, records, value=None):
    old = _answers(responses, encode_write(params, records, value)[0], "write")
    if value is not None or not _is_batch(records):
        return int(old[0])
    return old.astype(np.uint32) if isinstance(records, np.ndarray) else old.tolist()


def decode_read(params, responses, indices):
    values = _answers(responses, encode_read(params, indices)[0], "read")
    if isinstance(indices, np.ndarray):
        return values.astype(np.uint32)
    return values.tolist() if _is_batch(indices) else int(values[0])


def _error(op: str, encode):
    def error(params, response: Response, *args, **kwargs) -> str:
        # The same text whichever device answered: it is made from the call, not the answer.
        size = RECORD[op]
        for message in encode(params, *args, **kwargs):
            if len(message) % size:
                return (f"a message of {len(message)} bytes is not a whole number of "
                        f"{size}-byte records")
            index = np.frombuffer(message, dtype=RECORD_DTYPE if op == "write" else "<u2")
            if op == "write":
                index = index["index"]
            bad = np.flatnonzero(index >= params["slots"])
            if bad.size:
                return f"index {int(index[bad[0]])} out of range for {params['slots']} registers"
        return "malformed request"
    return error


# -- the bench and the HIL suite -------------------------------------------------------------

def workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
    """A write of ``size // 6`` records (at least one) to random registers."""
    slots = params["slots"]
    records = [(rng.randrange(slots), rng.getrandbits(32)) for _ in range(max(1, size // 6))]
    return "write", (records,)


def strategies(params) -> dict:
    from hypothesis import strategies as st

    slots = params["slots"]
    # Mostly registers that exist, a few of them often (so that writes overwrite writes), and
    # now and then one that does not (a KernelError, the same on every device).
    index = st.one_of(st.integers(0, min(slots, 8) - 1), st.integers(0, slots - 1),
                      st.integers(0, slots - 1), st.integers(slots, _INDEX_MAX))
    value = st.integers(0, _VALUE_MAX)
    record = st.tuples(index, value)
    return {
        "write": st.one_of(record, st.lists(record, max_size=40).map(lambda r: (r,))),
        "read": st.one_of(index.map(lambda i: (i,)),
                          st.lists(index, max_size=40).map(lambda i: (i,))),
    }


def _operation(name: str, encode, decode, doc: str) -> Operation:
    size = RECORD[name]
    return Operation(
        name, encode, decode,
        max_response=lambda params, n: ANSWER * (n // size),
        error=_error(name, encode),
        expansion=ANSWER / size, holdback=_holdback(name), doc=doc,
    )


SPEC = KernelSpec(
    name="regfile", id=200, version=1,
    summary="32-bit registers: write returns the old values, read the current ones",
    gateware="offload_regfile.gateware:RegfileKernel",
    model=RegfileModel,
    operations=(
        _operation("write", encode_write, decode_write,
                   "store values; answers each register's old value"),
        _operation("read", encode_read, decode_read, "each register's value"),
    ),
    params={"slots": Param(256, "32-bit registers", low=1, high=4096)},
    board_params={"icebreaker": {"slots": 256}},
    # After a reset the kernel clears one register a cycle, holding its input: with 256 the
    # bounded proof of the stream contract would need a depth past 260. Four registers run the
    # same logic.
    proof_params={"slots": 4},
    stateful=True,
    workload=workload, strategies=strategies,
)
