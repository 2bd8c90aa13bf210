# amaranth: UnusedElaboratable=no

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from hdl.link.fifo import ByteFifo


@pytest.mark.parametrize("push, pop", [(0.9, 0.2), (0.3, 0.9), (1.0, 1.0), (0.6, 0.6)])
def test_bytes_come_out_in_order(push, pop):
    dut = ByteFifo(8)
    rng = random.Random(int(push * 10 + pop))
    model = deque()  # bytes in the queue, the output register's included
    stats = {"out": 0, "full": 0}

    async def bench(ctx):
        value = 0
        for cycle in range(3000):
            phase = (cycle // 500) % 2  # fill it, then drain it
            w_valid = rng.random() < (push if phase == 0 else push / 3)
            r_ready = rng.random() < (pop / 3 if phase == 0 else pop)
            ctx.set(dut.w_stream.valid, w_valid)
            ctx.set(dut.w_stream.payload, value)
            ctx.set(dut.r_stream.ready, r_ready)
            w_ready = ctx.get(dut.w_stream.ready)
            r_valid = ctx.get(dut.r_stream.valid)
            # It holds its RAM's depth and the output register: full at depth + 1 at most.
            assert w_ready == (len(model) - r_valid < dut.depth), f"cycle {cycle}"
            if r_valid:
                assert model, f"cycle {cycle}: a byte out of an empty queue"
                assert ctx.get(dut.r_stream.payload) == model[0], f"cycle {cycle}"
                if r_ready:
                    model.popleft()
                    stats["out"] += 1
            else:
                # A byte written reaches the output two cycles later at the soonest.
                assert len(model) <= 1 or cycle == 0, f"cycle {cycle}: output idle"
            if w_valid and w_ready:
                model.append(value)
                value = (value + 1) % 256
            stats["full"] += not w_ready
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert stats["out"] > 300
    if push > pop:
        assert stats["full"] > 0


def test_depth_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        ByteFifo(6)
