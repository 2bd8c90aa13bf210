# amaranth: UnusedElaboratable=no

import random
from collections import Counter

import pytest
from amaranth.sim import Simulator

from hdl.link.counters import CounterBank


class Model:
    """The counts, and the steps the bank takes: the sweeper's pointer and the last step."""

    def __init__(self, count):
        self.count = count
        self.counts = [0] * count
        self.ptr = 0  # the counter the sweeper steps next
        self.last = None  # the counter stepped in the previous cycle (written back in this one)
        self.last_read = False  # that step was a read


def run(dut, cycles, traffic, *, seed=0, init=None):
    """Drive ``dut`` for ``cycles`` cycles and compare every read with the model.

    ``traffic(rng, cycle, model)`` gives the cycle's increments (a list of bits) and the
    counter to read (or None). Returns a Counter of what happened: ``checked`` reads, reads of
    the counter being written back (``after_write``, of which ``after_sweep``), reads of the
    counter the sweeper steps next (``before_sweep``), and ``most``, the largest pending count.
    """
    rng = random.Random(seed)
    model = Model(dut.count)
    if init is not None:
        model.counts = list(init)
    stats = Counter()

    async def bench(ctx):
        due = []  # (cycle, expected total) of the reads taken
        held = None
        for cycle in range(cycles):
            if due and due[0][0] == cycle:
                _, expected = due.pop(0)
                assert ctx.get(dut.rd_valid), f"cycle {cycle}: no result"
                assert ctx.get(dut.rd_data) == expected, f"cycle {cycle}"
                held = expected
                stats["checked"] += 1
            else:
                assert not ctx.get(dut.rd_valid), f"cycle {cycle}: unexpected result"
                if held is not None:
                    assert ctx.get(dut.rd_data) == held, f"cycle {cycle}: rd_data changed"
            pending = [ctx.get(p) for p in dut.pending]
            stats["most"] = max(stats["most"], *pending)
            # Room for this cycle's increment.
            assert max(pending) < 2 ** dut.pending_bits - 1, f"cycle {cycle}"

            inc, read = traffic(rng, cycle, model)
            ctx.set(dut.inc, sum(bit << i for i, bit in enumerate(inc)))
            ctx.set(dut.rd_en, read is not None)
            ctx.set(dut.rd_addr, read or 0)
            ready = ctx.get(dut.rd_ready)
            assert ready == (not model.last_read), f"cycle {cycle}: rd_ready"
            for i, bit in enumerate(inc):
                model.counts[i] += bit
            if read is not None and ready:
                due.append((cycle + CounterBank.LATENCY, model.counts[read] % 2 ** 32))
                if read == model.last:
                    stats["after_write"] += 1
                    stats["after_sweep"] += not model.last_read
                stats["before_sweep"] += read == model.ptr
                model.last, model.last_read = read, True
            else:
                model.last, model.last_read = model.ptr, False
                model.ptr = (model.ptr + 1) % model.count
            await ctx.tick()
        assert all(when >= cycles for when, _ in due)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return stats


def mixed_traffic(count, *, read_rate=0.3):
    """Phases of sparse, dense and saturated increments; reads of random counters, of the one
    stepped in the previous cycle, of the sweeper's next and of the one it stepped last."""
    def traffic(rng, cycle, model):
        density = (0.05, 0.5, 1.0, 0.9)[(cycle // 500) % 4]
        inc = [int(rng.random() < density) for _ in range(count)]
        read = None
        if rng.random() < read_rate:
            read = rng.choice([
                rng.randrange(count),
                model.last if model.last is not None else 0,
                model.ptr,
                (model.ptr - 1) % count,
            ])
        return inc, read
    return traffic


@pytest.mark.parametrize("count", [1, 3, 10, 16])
def test_random_reads(count):
    stats = run(CounterBank(count), 4000, mixed_traffic(count), seed=count)
    assert stats["checked"] > 500
    assert stats["after_sweep"] > 50 and stats["before_sweep"] > 50


def test_back_to_back_reads():
    # rd_en always high: a read is taken every other cycle, the sweeper has the others.
    count = 10

    def traffic(rng, cycle, model):
        inc = [int(rng.random() < 0.7) for _ in range(count)]
        return inc, model.last if rng.random() < 0.5 else rng.randrange(count)
    stats = run(CounterBank(count), 4000, traffic, seed=5)
    assert stats["checked"] == 2000 - 1  # the last one is due after the run
    assert stats["after_sweep"] > 500


def test_same_counter_again():
    # The same counter asked for every cycle while everything counts every cycle.
    count = 5

    def traffic(rng, cycle, model):
        return [1] * count, (cycle // 50) % count
    stats = run(CounterBank(count), 1000, traffic)
    assert stats["checked"] == 500 - 1
    assert stats["after_sweep"] > 50


def test_every_counter_every_cycle():
    count = 7

    def traffic(rng, cycle, model):
        return [1] * count, rng.randrange(count) if rng.random() < 0.25 else None
    stats = run(CounterBank(count), 3000, traffic, seed=3)
    assert stats["checked"] > 500


@pytest.mark.parametrize("count", [1, 2, 6, 10, 13, 16])
def test_pending_bound(count):
    # The worst case: every counter counts every cycle while reads (of one counter) take every
    # cycle they can. The others are swept every 2 * count cycles, and their pending counts
    # reach 2 * count - 1 before a step takes them with that cycle's increment.
    dut = CounterBank(count)

    def traffic(rng, cycle, model):
        return [1] * count, 0
    stats = run(dut, 20 * count + 200, traffic)
    assert stats["checked"] > 0
    # A single counter is stepped every cycle.
    assert stats["most"] == (2 * count - 1 if count > 1 else 0)
    assert 2 * count <= 2 ** dut.pending_bits - 1


def test_wraps_modulo_2_32():
    # Totals near the top of their range, preloaded into the RAM, wrap like 32-bit counters.
    init = [2 ** 32 - 40, 2 ** 32 - 3]

    class Preloaded(CounterBank):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            m.submodules.totals.init = init
            return m

    wrapped = []

    def traffic(rng, cycle, model):
        wrapped.append(min(model.counts) >= 2 ** 32)
        return [1, 1], rng.randrange(2) if rng.random() < 0.4 else None
    stats = run(Preloaded(2), 200, traffic, init=init)
    assert stats["checked"] > 30 and any(wrapped)


def test_bad_count():
    for count in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            CounterBank(count)
