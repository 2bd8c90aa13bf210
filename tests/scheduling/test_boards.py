"""The scheduler and the PIFO on virtual boards (the gateware in Verilator behind the link)
against the CPU path: hypothesis-made traces give the same departures for every policy, and
random push/pop sequences the same pops, a KernelError included."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import offload
from offload import KernelError
from offload.kernels import get, same_result
from offload.kernels.scheduling import bursty_trace, scheduler_config
from sim.toolchain import ToolchainError
from tests.hil.test_hil import outcome

#: Each policy's build: small quanta and uneven weights, so that deficit round robin turns
#: queues away (packets are longer than a quantum) and weighted rounds are skipped.
BUILDS = {
    "sp": {"policy": "sp", "queues": 3, "depth": 4},
    "rr": {"policy": "rr", "queues": 4, "depth": 4},
    "wrr": {"policy": "wrr", "queues": 4, "depth": 4, "weights": "3,1,2,1"},
    "drr": {"policy": "drr", "queues": 4, "depth": 4, "quanta": "100,300,40,1500"},
}

# Derandomized: the same examples every run, so the counts that show a test is not vacuous
# are the same too.
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def boards():
    """A virtual iCEBreaker per policy, each with the scheduler of that policy; the first one
    has the PIFO too."""
    opened = {}
    try:
        for n, (policy, params) in enumerate(BUILDS.items()):
            kernels = {"scheduler": params, **({"pifo": {"capacity": 8}} if n == 0 else {})}
            opened[policy] = offload.open("sim:icebreaker", fallback="never",
                                          kernels=list(kernels), params=kernels)
    except ToolchainError as exc:
        for device in opened.values():
            device.close()
        pytest.skip(f"the virtual boards need Verilator: {exc}")
    yield opened
    for device in opened.values():
        device.close()


@pytest.mark.parametrize("policy", list(BUILDS))
def test_departures_are_the_cpu_paths_for_every_policy(boards, policy):
    device = boards[policy]
    spec = get("scheduler")
    params = device.params("scheduler")
    assert params["policy"] == policy
    cpu = offload.open("cpu", params={"scheduler": params})
    tally = {"departures": 0, "refused": 0}

    @SETTINGS
    @given(spec.strategies(params)["run"])
    def check(args):
        (trace,) = args
        got = outcome(device.scheduler, trace)
        want = outcome(cpu.scheduler, trace)
        assert same_result(got, want), (trace, got, want)
        if isinstance(want, KernelError):
            tally["refused"] += 1
        else:
            tally["departures"] += len(want)

    check()
    # Not vacuous: packets went through, and some traces were refused.
    assert tally["departures"] > 200 and tally["refused"] > 0
    assert device.stats()["fallbacks"] == 0


@pytest.mark.parametrize("policy", ["sp", "drr"])
def test_a_long_trace_crosses_many_frames(boards, policy):
    """A trace of 16 KiB, cut into frames with the departures of packets held from earlier
    frames coming out in later ones (the holdback the link sizes frames for): the same
    departures as the CPU path's, none lost, none timed out."""
    device = boards[policy]
    params = device.params("scheduler")
    trace = bursty_trace(random.Random(4), 2048, scheduler_config(params))
    got = device.scheduler(trace)
    assert got == offload.open("cpu", params={"scheduler": params}).scheduler(trace)
    assert len(got) == len(trace) and device.stats()["fallbacks"] == 0
    assert device.stats()["errors"] == 0


def test_a_long_pifo_batch_crosses_many_frames(boards):
    device = boards["sp"]
    params = device.params("pifo")
    device.reset("pifo")
    _, (ops,) = get("pifo").workload(params, 24 << 10, random.Random(5))
    want = offload.open("cpu", params={"pifo": params}).pifo.run(ops)
    assert device.pifo.run(ops) == want and len(want) > 1000


def test_the_pifo_gives_the_cpu_paths_pops(boards):
    device = boards["sp"]
    params = device.params("pifo")
    spec = get("pifo")
    device.reset("pifo")
    model = spec.model(params)
    push = st.tuples(st.just("push"), st.integers(0, 5), st.integers(0, (1 << 32) - 1))
    op = st.one_of(push, push, st.just(("pop",)))
    tally = {"pops": 0, "refused": 0}

    @SETTINGS
    @given(st.lists(op, max_size=24))
    def check(ops):
        want = outcome(spec.run_on_model, model, spec.operation("run"), params, (ops,), {})
        got = outcome(device.pifo.run, ops)
        assert same_result(got, want), (ops, got, want)
        if isinstance(want, KernelError):
            tally["refused"] += 1
        else:
            tally["pops"] += len(want)

    check()
    assert tally["pops"] > 30 and tally["refused"] > 0
    # The state carried from call to call is the same: both hold the same entries now.
    held = []
    while True:
        got, want = outcome(device.pifo.pop), outcome(spec.run_on_model, model,
                                                      spec.operation("pop"), params, (), {})
        assert same_result(got, want)
        if isinstance(got, KernelError):
            break
        held.append(got)
    assert held == sorted(held, key=lambda entry: entry[0])
