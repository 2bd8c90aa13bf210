"""CRC-32 of Ethernet's frame check sequence, a byte at a time.

Ethernet's FCS is CRC-32 (IEEE 802.3, the CRC of ``zlib.crc32``): polynomial 0x04C11DB7,
processed least significant bit first (so the register shifts right with the reflected
polynomial 0xEDB88320), initial register 0xFFFFFFFF, final XOR 0xFFFFFFFF, sent least
significant byte first. Run over a frame and its FCS, the register (before the final XOR)
ends at :data:`RESIDUE` when the FCS is right.

:func:`crc_byte_step` is the same GF(2) idea as :func:`hdl.kernels.crc32c.crc_byte_step`, but
for this polynomial: each output bit is the XOR of the state and data bits its matrix row
selects, written as a plain XOR of single bits (no ``x & CONST``, which Verilator runs slowly).
"""

from amaranth.hdl import Cat, Const

from ..kernels.crc32c import crc_matrices, crc_update

__all__ = ["POLY", "INIT", "XOROUT", "RESIDUE", "crc32_ref", "crc_byte_rows", "crc_byte_step"]

#: CRC-32 polynomial, bit-reversed.
POLY = 0xEDB88320
INIT = 0xFFFFFFFF
XOROUT = 0xFFFFFFFF
#: The register after a frame followed by its right FCS (before the final XOR).
RESIDUE = 0xDEBB20E3


def crc32_ref(data: bytes) -> int:
    """Bit-serial CRC-32, equal to ``zlib.crc32(data)``."""
    return crc_update(INIT, bytes(data), POLY) ^ XOROUT


def crc_byte_rows(poly: int = POLY) -> list[list[int]]:
    """For each of the 32 output bits, the input bits it is the XOR of: the rows of
    :func:`hdl.kernels.crc32c.crc_matrices` for one byte, as lists.

    Input bits 0 to 31 are the register before the byte, 32 to 39 the byte's bits.
    """
    a_rows, d_rows = crc_matrices(1, poly)
    return [[i for i in range(40) if ((a | d << 32) >> i) & 1]
            for a, d in zip(a_rows, d_rows, strict=True)]


def crc_byte_step(state, byte, poly: int = POLY):
    """The CRC register after one more ``byte`` (an expression of ``state`` and ``byte``)."""
    x = Cat(state, byte)
    bits = []
    for row in crc_byte_rows(poly):
        bits.append(Cat(*(x[i] for i in row)).xor() if row else Const(0, 1))
    return Cat(*bits)
