"""Simulation: Verilog from Amaranth, cached Verilator builds, harnesses and cocotb runs.

Importing this package does not import cocotb (only testbenches do) nor build anything.
"""

from .build import SimulationError
from .toolchain import ToolchainError

__all__ = ["SimulationError", "ToolchainError"]
