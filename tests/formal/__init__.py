"""Formal checks of the kernel stream contract (SymbiYosys)."""
