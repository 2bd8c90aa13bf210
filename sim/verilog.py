"""Amaranth components as Verilog text, the input of every Verilator build.

The Verilog of a component is also the key of the build cache (:mod:`sim.build`), so it is
emitted without ``src`` attributes by default: they hold absolute paths and line numbers, and
with them a comment edited in a kernel, or the same checkout in another folder, would rebuild a
model whose logic did not change.
"""

from __future__ import annotations

import re

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["to_verilog", "module_ports", "remove_self_loops"]


def to_verilog(component: wiring.Component, name: str, *, emit_src: bool = False) -> str:
    """Verilog for ``component`` as a module named ``name``.

    The ports are the component's signature members, flattened with ``__`` (``i_stream``'s
    ``valid`` becomes ``i_stream__valid``), plus ``clk`` and ``rst`` for the ``sync`` domain
    when the component uses it.

    Parameters
    ----------
    component : wiring.Component
        The design; its signature gives the ports.
    name : str
        Name of the top-level module (a Verilog identifier).
    emit_src : bool
        Keep Amaranth's ``src`` attributes (source locations), which help read Verilator's
        warnings but make the text, and so the build cache key, depend on where the source is.

    Returns
    -------
    str
        The Verilog text: the top module and one module per submodule.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"Component must be an amaranth wiring.Component, not {component!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"Module name must be a plain Verilog identifier, not {name!r}")
    return verilog.convert(component, name=name, emit_src=emit_src)


def module_ports(verilog_text: str, name: str) -> list[str]:
    """The port names of module ``name`` in ``verilog_text``, in declaration order.

    Parameters
    ----------
    verilog_text : str
        Verilog as written by :func:`to_verilog`.
    name : str
        The module to look up.

    Returns
    -------
    list of str
        Port names, for example ``["i_stream__valid", "clk", "rst", ...]``.
    """
    match = re.search(rf"^\s*module\s+{re.escape(name)}\s*\(([^)]*)\)\s*;", verilog_text, re.M)
    if match is None:
        raise ValueError(f"There is no module {name!r} in this Verilog")
    return [port.strip() for port in match.group(1).split(",") if port.strip()]


# One flip-flop as Yosys's write_verilog prints it: an always block of its own holding a single
# non-blocking assignment. Identifiers are plain or escaped (a backslash, then up to a space).
_IDENT = r"(?:\\\S+|[A-Za-z_][A-Za-z0-9_$]*)"
_SELF_LOOP = re.compile(
    rf"^[ \t]*always @\((?:pos|neg)edge {_IDENT}\s*\)[ \t]*\n"
    rf"[ \t]*(?P<q>{_IDENT})\s*<=\s*(?P=q)\s*;[ \t]*\n",
    re.M,
)


def remove_self_loops(verilog_text: str) -> tuple[str, int]:
    """Drop the flip-flops whose next value is their own value.

    Such a register never changes: it holds its initial value forever, and Yosys folds it into a
    constant when synthesising. Kernels use them on purpose to keep a constant opaque to
    Verilator (see ``hdl/kernels/crc32c.py``), but Verilator still copies each one through a
    temporary on every clock edge, which for the CRC kernel's hundreds of mask registers took
    about a third of the simulation time. Without the always block the register is a variable
    set once by its initialiser: the same values, still opaque, and no per-cycle copy.

    Only a block that is exactly ``always @(posedge clk) q <= q;`` is removed, so a register
    with any other driver, a reset, or a condition is left alone.

    Parameters
    ----------
    verilog_text : str
        Verilog as written by :func:`to_verilog`.

    Returns
    -------
    tuple of (str, int)
        The Verilog without those blocks, and how many were removed.
    """
    return _SELF_LOOP.subn("", verilog_text)
