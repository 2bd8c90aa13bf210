# amaranth: UnusedElaboratable=no

import random
from collections import Counter

import pytest
from amaranth.hdl import ResetInserter, Signal
from amaranth.sim import Simulator

from hdl.link.counters import CounterBank


class Model:
    """The counts, and where the sweeper is: at counter ``cycle // 2 % count`` in every cycle
    (its low half in even cycles, its high half in odd ones), and writing from the second cycle
    on."""

    def __init__(self, count):
        self.count = count
        self.counts = [0] * count
        self.cycle = 0

    @property
    def ptr(self):
        return self.cycle // 2 % self.count

    def ready(self, read):
        return self.cycle >= 1 and self.cycle % 2 == 0 and read == self.ptr


def run(dut, cycles, traffic, *, seed=0, init=None, reset=None):
    """Drive ``dut`` for ``cycles`` cycles and compare every read, and the low bits of every
    count that it keeps in flip-flops, with the model.

    ``traffic(rng, cycle, model)`` gives the cycle's increments (a list of bits) and the
    counter to read (or None); a read it asks for is taken when the model says the sweeper is
    there. Returns a Counter of what happened: reads ``taken`` and ``checked``, reads of a
    counter that counted in the cycle the read was taken (``counting``), cycles a read asked
    for and waited (``waited``). ``reset(cycle)``, if given, is the domain reset in a cycle.
    """
    rng = random.Random(seed)
    model = Model(dut.count)
    if init is not None:
        model.counts = list(init)
    stats = Counter()
    rst = Signal()

    async def bench(ctx):
        due = []  # (cycle, expected total) of the reads taken
        held = None
        for cycle in range(cycles):
            model.cycle = cycle
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
            low = [ctx.get(p) for p in dut.pending]
            assert low == [c % 2 ** dut.pending_bits for c in model.counts], f"cycle {cycle}"

            inc, read = traffic(rng, cycle, model)
            if reset is not None:
                ctx.set(rst, reset(cycle))
            ctx.set(dut.inc, sum(bit << i for i, bit in enumerate(inc)))
            ctx.set(dut.rd_en, read is not None)
            ctx.set(dut.rd_addr, read or 0)
            ready = ctx.get(dut.rd_ready)
            if read is not None:
                assert ready == model.ready(read), f"cycle {cycle}: rd_ready"
                if ready:
                    # This cycle's increments are not in it.
                    due.append((cycle + CounterBank.LATENCY, model.counts[read] % 2 ** 32))
                    held = None  # rd_data may change from the next cycle until the result
                    stats["taken"] += 1
                    stats["counting"] += inc[read]
                else:
                    stats["waited"] += 1
            for i, bit in enumerate(inc):
                model.counts[i] += bit
            await ctx.tick()
        assert all(when >= cycles for when, _ in due)

    sim = Simulator(dut if reset is None else ResetInserter(rst)(dut))
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return stats


def waiting_reader(count, choose, *, read_rate=1.0):
    """Reads as a reader makes them: it asks for a counter (``choose(rng, model)``, with
    probability ``read_rate`` a cycle when it has none) and holds it until it is taken."""
    wanted = None

    def read(rng, model):
        nonlocal wanted
        if wanted is None and rng.random() < read_rate:
            wanted = choose(rng, model)
        asked = wanted
        if asked is not None and model.ready(asked):
            wanted = None
        return asked
    return read


def mixed_traffic(count, *, read_rate=0.3):
    """Phases of sparse, dense and saturated increments; reads of random counters, of the one
    the sweeper is at (taken at once), of the next and of the one it has just left."""
    reader = waiting_reader(count, lambda rng, model: rng.choice([
        rng.randrange(count), model.ptr, (model.ptr + 1) % count, (model.ptr - 1) % count,
    ]), read_rate=read_rate)

    def traffic(rng, cycle, model):
        density = (0.05, 0.5, 1.0, 0.9)[(cycle // 500) % 4]
        inc = [int(rng.random() < density) for _ in range(count)]
        return inc, reader(rng, model)
    return traffic


@pytest.mark.parametrize("count", [1, 3, 10, 16])
def test_random_reads(count):
    stats = run(CounterBank(count), 4000, mixed_traffic(count), seed=count)
    assert stats["checked"] > 4000 // (2 * count + 10)
    assert stats["counting"] > stats["checked"] // 4
    if count > 1:
        assert stats["waited"] > 100


def test_back_to_back_reads():
    # rd_en always high: each read is asked for in the cycle after the one before is taken.
    count = 10
    reader = waiting_reader(count, lambda rng, model: rng.randrange(count))

    def traffic(rng, cycle, model):
        return [int(rng.random() < 0.7) for _ in range(count)], reader(rng, model)
    stats = run(CounterBank(count), 4000, traffic, seed=5)
    # A read waits at most 2 * count cycles, for the sweeper to come round.
    assert stats["checked"] > 4000 // (2 * count)
    assert stats["counting"] > stats["checked"] // 2


def test_same_counter_again():
    # The same counter asked for every cycle while everything counts every cycle: it is taken
    # every 2 * count cycles, each time with 2 * count more.
    count = 5

    def traffic(rng, cycle, model):
        return [1] * count, (cycle // 50) % count
    stats = run(CounterBank(count), 1000, traffic)
    # The read of cycle 0 is not taken, and that of cycle 998 is due after the run.
    assert stats["checked"] == 1000 // (2 * count) - 2
    assert stats["counting"] == stats["taken"] == stats["checked"] + 1


def test_every_counter_every_cycle():
    count = 7
    reader = waiting_reader(count, lambda rng, model: rng.randrange(count), read_rate=0.25)

    def traffic(rng, cycle, model):
        return [1] * count, reader(rng, model)
    stats = run(CounterBank(count), 3000, traffic, seed=3)
    assert stats["checked"] > 200


@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 10, 13, 15, 16])
def test_every_counter_counting_every_cycle(count):
    # The worst case: every counter counts every cycle, 2 * count times between two steps at
    # its low half (reads come as they may: they do not hold the sweeper), and its low bits
    # wrap around with as few as 2 ** pending_bits - 2 * count to spare (2 when count is one
    # less than a power of two).
    dut = CounterBank(count)
    reader = waiting_reader(count, lambda rng, model: rng.randrange(count))

    def traffic(rng, cycle, model):
        return [1] * count, reader(rng, model)
    stats = run(dut, 20 * count + 200, traffic, seed=count)
    assert stats["checked"] > 10


def test_pending_registers_narrow():
    # The low bits of a count are as few as hold the 2 * count increments between two steps of
    # the sweeper at its low half.
    for count in range(1, 70):
        bits = CounterBank(count).pending_bits
        assert 2 * count < 2 ** bits and not 2 * count < 2 ** (bits - 1)


def test_reset_changes_no_count():
    # Domain resets, short and long, while every counter counts; no read is asked for in them.
    count = 6
    resets = [(300, 301), (500, 507), (800, 840)]

    def in_reset(cycle):
        return any(start <= cycle < end for start, end in resets)
    reader = waiting_reader(count, lambda rng, model: rng.randrange(count), read_rate=0.5)

    def traffic(rng, cycle, model):
        inc = [int(rng.random() < 0.8) for _ in range(count)]
        return inc, None if in_reset(cycle) else reader(rng, model)
    stats = run(CounterBank(count), 1200, traffic, seed=11, reset=in_reset)
    assert stats["checked"] > 100


def test_wraps_modulo_2_32():
    # Totals near the top of their range, preloaded into the RAM, wrap like 32-bit counters.
    # Their low bits are 0, as the flip-flops' are at power-on.
    init = [2 ** 32 - 40, 2 ** 32 - 8]

    class Preloaded(CounterBank):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            # Two 16-bit entries a counter, the low half first.
            m.submodules.totals.init = [total >> shift & 0xFFFF
                                        for total in init for shift in (0, 16)]
            return m

    wrapped = []
    reader = waiting_reader(2, lambda rng, model: rng.randrange(2), read_rate=0.4)

    def traffic(rng, cycle, model):
        wrapped.append(min(model.counts) >= 2 ** 32)
        return [1, 1], reader(rng, model)
    stats = run(Preloaded(2), 200, traffic, init=init)
    assert stats["checked"] > 30 and any(wrapped)


def test_bad_count():
    for count in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            CounterBank(count)
