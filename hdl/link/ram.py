"""Block RAM read ports without logic for read/write collisions.

An Amaranth read port that is not transparent returns, when it reads an address in the cycle it
is written, the byte from before the write. The iCE40's block RAM does not promise that, so
Yosys adds logic to every such port to make sure of it: a register of the written data and
its address, a comparator and a multiplexer, tens of logic cells a port. The memories of the
link never read a byte they are writing when the byte matters (each says why), so they read
through :func:`read_port`: an asynchronous read port and a register behind it, which Yosys
merges into the block RAM's own read port, told by the memory's ``no_rw_check`` attribute that
a collision's outcome does not matter. Simulated, the port is what a synchronous,
non-transparent one is.
"""

from amaranth.hdl import Signal

__all__ = ["NO_RW_CHECK", "read_port"]

#: The attribute a memory read through :func:`read_port` is made with.
NO_RW_CHECK = {"no_rw_check": 1}


class _ReadPort:
    def __init__(self, m, memory, name):
        port = memory.read_port(domain="comb")
        self.addr = port.addr
        self.en = Signal(init=1, name=f"{name}_en")
        # No reset: a reset would be a reset of the block RAM's port, which it does not have.
        self.data = Signal(memory.shape, reset_less=True, name=f"{name}_data")
        with m.If(self.en):
            m.d.sync += self.data.eq(port.data)


def read_port(m, memory, name):
    """A read port of ``memory`` (made with ``attrs=NO_RW_CHECK``) with ``addr``, ``en`` and
    ``data`` as those of ``memory.read_port()``: ``data`` is the word at ``addr`` in the cycle
    before one in which ``en`` was high, and holds it while ``en`` is low."""
    return _ReadPort(m, memory, name)
