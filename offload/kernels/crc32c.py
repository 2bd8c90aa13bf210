"""CRC-32C: the CPU path (the reference and the fallback), the request codec, the workload.

The kernel has one operation, ``call``: a message's bytes in, their CRC-32C (four bytes, least
significant first) out. A batch (a list of byte strings) is one message per string, pipelined
on the link, and answers a list of CRCs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import google_crc32c

from . import KernelSpec, Operation, Param, Response
from ._bytes import as_bytes

__all__ = ["SPEC", "Crc32cModel"]


class Crc32cModel:
    """The CPU path: google-crc32c (the SSE4.2 / ARMv8 CRC instruction where there is one)."""

    def __init__(self, params: Mapping[str, int]):
        self.params = params

    def run(self, op: str, request: bytes) -> Response:
        return Response(google_crc32c.value(request).to_bytes(4, "little"))

    def reset(self) -> None:
        pass


def _is_batch(data: object) -> bool:
    return isinstance(data, (list, tuple))


def encode(params, data) -> list[bytes]:
    """One message per byte string; ``TypeError`` naming what is accepted for anything else."""
    if _is_batch(data):
        return [as_bytes(item) for item in data]
    return [as_bytes(data)]


def decode(params, responses: list[bytes], data):
    for response in responses:
        if len(response) != 4:
            raise ValueError(f"a CRC-32C response is 4 bytes, got {len(response)}")
    values = [int.from_bytes(r, "little") for r in responses]
    return values if _is_batch(data) else values[0]


def workload(params, size: int, rng: random.Random) -> tuple[str, tuple]:
    return "call", (rng.randbytes(size),)


def strategies(params) -> dict:
    from hypothesis import strategies as st

    one = st.binary(max_size=3000)
    return {"call": st.one_of(one.map(lambda b: (b,)),
                              st.lists(st.binary(max_size=300), max_size=8).map(lambda b: (b,)))}


SPEC = KernelSpec(
    name="crc32c", id=1, version=2,
    summary="CRC-32C (Castagnoli) of a byte string, or of each in a list",
    gateware="hdl.kernels.crc32c:Crc32cKernel",
    model=Crc32cModel,
    operations=(Operation("call", encode, decode, max_response=lambda params, n: 4,
                          doc="CRC-32C of the bytes"),),
    params={"width": Param(4, "bytes per beat", choices=(1, 2, 4, 8))},
    # The iCE40 UP5K is small and slow, so one byte per cycle (the link delivers one byte a
    # cycle anyway); the ECP5-85F has room and speed for four.
    board_params={"icebreaker": {"width": 1}, "ulx3s-85f": {"width": 4}},
    workload=workload, strategies=strategies,
)
