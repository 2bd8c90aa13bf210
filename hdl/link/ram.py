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

The register has no value at power-on in hardware, as a block RAM's output has none: Amaranth
gives every signal one, so the register is marked (``NO_INIT_ATTR``) and the build removes it
with :data:`YOSYS_SCRIPT` before synthesis (else Yosys adds a gate to every bit of the port to
make it 0 until the first read). Nothing reads the port before its first read.
"""

from amaranth.hdl import Signal

__all__ = ["NO_INIT_ATTR", "NO_RW_CHECK", "YOSYS_SCRIPT", "read_port"]

#: The attribute a memory read through :func:`read_port` is made with.
NO_RW_CHECK = {"no_rw_check": 1}
#: The attribute of the registers of :func:`read_port`, whose power-on value the build drops.
NO_INIT_ATTR = "offload_no_init"
#: Yosys commands, after the design is read, that drop the power-on value of those registers.
YOSYS_SCRIPT = f"setattr -unset init a:{NO_INIT_ATTR}"


class _ReadPort:
    def __init__(self, m, memory, name):
        port = memory.read_port(domain="comb")
        self.addr = port.addr
        self.en = Signal(init=1, name=f"{name}_en")
        # No reset: a reset would be a reset of the block RAM's port, which it does not have.
        self.data = Signal(memory.shape, reset_less=True, name=f"{name}_data",
                           attrs={NO_INIT_ATTR: 1})
        with m.If(self.en):
            m.d.sync += self.data.eq(port.data)


def read_port(m, memory, name):
    """A read port of ``memory`` (made with ``attrs=NO_RW_CHECK``) with ``addr``, ``en`` and
    ``data`` as those of ``memory.read_port()``: ``data`` is the word at ``addr`` in the cycle
    before one in which ``en`` was high, and holds it while ``en`` is low."""
    return _ReadPort(m, memory, name)
