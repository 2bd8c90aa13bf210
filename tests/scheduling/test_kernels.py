"""The scheduler and PIFO kernels on the CPU path: their parameters, codecs and errors (the
gateware's answers are compared with the same CPU path in ``test_*_gateware.py`` and on
virtual boards in ``test_boards.py``), and the fairness figures the bench shows."""

from __future__ import annotations

import random

import numpy as np
import pytest

import offload
from offload import KernelError
from offload.kernels import ParamError, get
from offload.kernels.scheduling import MAX_HELD, bursty_trace, scheduler_config
from offload.scheduling import POLICIES, Arrival, Departure, schedule
from offload.scheduling.fairness import (
    backlogged_service,
    gps_lag,
    grants_per_cycle,
    jain,
    shares,
)


def cpu(**params):
    return offload.open("cpu", params={"scheduler": params} if params else None)


def test_departures_are_the_models_with_lengths_and_indices():
    trace = [(0, 0, 150), (0, 1, 150), (0, 0, 50), (1, 1, 600), (9, 0, 64)]
    params = {"policy": "drr", "quanta": "100,300", "queues": 2}
    got = cpu(**params).scheduler(trace)
    assert got == schedule(trace, 2, "drr", quanta=[100, 300])
    assert [d.index for d in got] == [1, 0, 2, 3, 4]  # queue 1 first: its quantum covers it
    assert all(isinstance(d, Departure) for d in got)
    # A numpy array of rows and Arrival records are taken too.
    assert cpu(**params).scheduler(np.array(trace)) == got
    assert cpu(**params).scheduler([Arrival(*a) for a in trace]) == got


def test_policies_and_numbers_are_parameters():
    spec = get("scheduler")
    values = spec.resolve({"policy": "WRR", "weights": "3, 1 2;1", "queues": 4})
    assert (values["policy"], values["weights"]) == ("wrr", "3,1,2,1")
    assert spec.resolve({"quanta": [100, 200]})["quanta"] == "100,200"
    assert scheduler_config(spec.resolve({"weights": 2}))["weights"] == (2, 2, 2, 2)
    for bad in ({"policy": "fifo"}, {"weights": "0"}, {"weights": "1,x"}, {"quanta": 70000},
                {"queues": 17}, {"depth": 0}):
        with pytest.raises(ParamError):
            spec.resolve(bad)
    with pytest.raises(ParamError, match="3 values for 4 queues"):
        scheduler_config(spec.resolve({"weights": "1,2,3"}))
    with pytest.raises(ParamError, match="queues x depth"):
        scheduler_config(spec.resolve({"queues": 16, "depth": MAX_HELD // 16 + 1}))


def test_a_trace_the_kernel_refuses_is_a_kernel_error_naming_the_arrival():
    dev = cpu(queues=2, depth=2)
    for trace, words in (([(0, 2, 5)], "arrival 0: queue 2 is not one of the 2"),
                         ([(0, 0, 5), (0, 1, 0)], "arrival 1: a packet is at least 1 byte"),
                         ([(5, 0, 5), (4, 0, 5)], "arrival 1: time 4 is before the last, 5"),
                         ([(0, 0, 5)] * 3, "arrival 2: queue 0 already holds 2 packets")):
        with pytest.raises(KernelError, match=words):
            dev.scheduler(trace)
    # What no record can carry is refused before anything is sent.
    for trace, error in (([(-1, 0, 5)], ValueError), ([(0, 0, 1 << 16)], ValueError),
                         ([(0, 0)], TypeError), ("trace", TypeError),
                         (np.zeros((2, 2), int), TypeError)):
        with pytest.raises(error):
            dev.scheduler(trace)


def test_the_pifo_keeps_its_state_and_names_what_it_refuses():
    dev = offload.open("cpu", params={"pifo": {"capacity": 3}})
    assert dev.pifo.run([("push", 5, 50), ("push", 3, 30), ("push", 3, 31), "pop"]) == \
        [(3, 30)]
    assert dev.pifo.pop() == (3, 31)  # first pushed first among equal ranks
    dev.pifo.push(9, 90)
    with pytest.raises(KernelError, match="operation 3: a push to a full PIFO .3 entries"):
        dev.pifo.run([("push", 1, 10), ("pop",), ("push", 2, 20), ("push", 0, 0)])
    # The operations before the refused one took effect; those after it did not.
    assert dev.pifo.run(["pop", "pop", "pop"]) == [(2, 20), (5, 50), (9, 90)]
    with pytest.raises(KernelError, match="operation 0: a pop from an empty PIFO"):
        dev.pifo.pop()
    dev.pifo.push(1, 1)
    dev.reset("pifo")
    with pytest.raises(KernelError, match="empty"):
        dev.pifo.pop()
    for ops, error in (([("push", -1, 0)], ValueError), ([("push", 1 << 16, 0)], ValueError),
                       ([("pull",)], TypeError), ([("pop", 1)], TypeError), ("pop", TypeError)):
        with pytest.raises(error):
            dev.pifo.run(ops)


def test_the_bench_workload_is_a_trace_the_kernel_takes():
    for policy in POLICIES:
        config = scheduler_config(get("scheduler").resolve({"policy": policy}))
        trace = bursty_trace(random.Random(1), 300, config)
        assert len(trace) == 300
        schedule(trace, config["queues"], policy, weights=config["weights"],
                 quanta=config["quanta"], capacity=config["depth"])  # raises if refused
        assert len({a.time for a in trace}) < 300  # bursts: several arrivals in one cycle


# -- fairness figures --------------------------------------------------------------------------

def saturated(queues: int, packets: int, lengths) -> list[Arrival]:
    """Every queue given ``packets`` packets at cycle 0: backlogged until the end."""
    return [Arrival(0, q, lengths(q, k)) for k in range(packets) for q in range(queues)]


def test_jain_index():
    assert jain([3, 3, 3]) == pytest.approx(1.0)
    assert jain([1, 0, 0, 0]) == pytest.approx(0.25)
    assert 0.25 < jain([4, 1, 1, 1]) < 1.0


def test_fairness_figures_rank_the_policies():
    queues = 4
    rng = random.Random(2)
    trace = saturated(queues, 40, lambda q, k: rng.choice([64, 1500]))
    weights, quanta = [4, 2, 1, 1], [1500] * queues
    got = {}
    for policy in POLICIES:
        out = schedule(trace, queues, policy, weights=weights, quanta=quanta)
        share = shares(policy, queues, weights, quanta)
        served = backlogged_service(trace, out, queues)
        got[policy] = (jain([s / w for s, w in zip(served, share, strict=True)]),
                       gps_lag(trace, out, queues, share), grants_per_cycle(trace, out))
    # Strict priority serves queue 0 alone while it is backlogged: the least fair, and far
    # behind the fluid share; deficit round robin is fair in bytes and within a quantum and a
    # packet of it, round robin only in packets.
    assert got["sp"][0] == pytest.approx(0.25)
    assert got["drr"][0] > 0.95 and got["drr"][0] > got["rr"][0]
    assert got["drr"][1] <= 1500 + 1500
    assert got["sp"][1] > 10 * 1500
    assert got["wrr"][0] > 0.8  # in packets per weight; lengths are random
    # One grant a cycle, except deficit round robin, whose turns without a send are cycles.
    assert got["sp"][2] == got["rr"][2] == got["wrr"][2] == 1.0
    assert got["drr"][2] < 1.0
