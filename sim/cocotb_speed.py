"""A cocotb testbench that measures how fast cocotb drives a byte-stream component.

Run only by the cocotb runner (``sim.cocotb_runner.run_cocotb``), never imported by library
code. Every cycle it sets the input beat and reads the output, as a verification testbench
does, with a message ending every 64 beats; it writes ``{"cycles": N, "seconds": S}`` to the
file named by ``OFFLOAD_SPEED_OUT``, timing the driving loop alone.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge


@cocotb.test()
async def stream_speed(dut):
    cycles = int(os.environ.get("OFFLOAD_CYCLES", "20000"))
    width = int(os.environ["OFFLOAD_WIDTH"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i_stream__valid.value = 0
    dut.o_stream__ready.value = 1
    for _ in range(4):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    data = int.from_bytes(bytes(range(1, width + 1)), "little")
    # Where the fields sit in the payload: from hdl.stream.byte_layout, passed by the caller.
    nbytes_shift = int(os.environ["OFFLOAD_NBYTES_OFFSET"])
    last_shift = int(os.environ["OFFLOAD_LAST_OFFSET"])
    full = data | (width << nbytes_shift)
    dut.i_stream__valid.value = 1
    taken = 0
    start = time.perf_counter()
    for i in range(cycles):
        dut.i_stream__payload.value = full | ((i % 64 == 63) << last_shift)
        await RisingEdge(dut.clk)
        taken += int(dut.o_stream__valid.value)
    seconds = time.perf_counter() - start
    assert taken > 0, "the component produced no output"
    with open(os.environ["OFFLOAD_SPEED_OUT"], "w") as out:
        json.dump({"cycles": cycles, "seconds": seconds}, out)
