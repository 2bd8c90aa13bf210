# amaranth: UnusedElaboratable=no
# (tests that expect an error make components that are never elaborated)
"""The Verilator build cache, the Verilog helpers, and the stream harness on a plain register.

The cache tests build into a temporary ``OFFLOAD_CACHE_DIR``, so that they see real builds;
the harness tests use the shared cache like every other test, so they build once per machine.
"""

from __future__ import annotations

import functools
import random
import threading

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.stream import WIDTHS, byte_layout, byte_stream
from sim import build, toolchain
from sim.build import STAMP, SimulationError, build_model, build_once
from sim.harness import StreamHarness, stream_layout_header, verilator_name
from sim.toolchain import ToolchainError
from sim.verilog import module_ports, remove_self_loops, to_verilog


class RegisterSlice(wiring.Component):
    """One register stage on a byte stream: every message comes back unchanged."""

    def __init__(self, width: int):
        self.width = width
        super().__init__({"i_stream": In(byte_stream(width)), "o_stream": Out(byte_stream(width))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(i.ready):
            m.d.sync += [o.valid.eq(i.valid), o.payload.eq(i.payload)]
        return m


# Cheap options for the cache tests: what matters there is whether Verilator runs at all.
QUICK_FLAGS = ("-Wno-fatal", "--no-timing")


@pytest.fixture
def verilator():
    try:
        toolchain.verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_to_verilog_ports():
    verilog = to_verilog(RegisterSlice(4), "slice_w4")
    ports = module_ports(verilog, "slice_w4")
    assert {"clk", "rst", "i_stream__valid", "i_stream__ready", "i_stream__payload",
            "o_stream__valid", "o_stream__ready", "o_stream__payload"} == set(ports)
    # No source locations by default: the text, and so the cache key, is independent of where
    # the checkout is.
    assert "src =" not in verilog


def test_to_verilog_checks_arguments():
    with pytest.raises(TypeError, match="wiring.Component"):
        to_verilog(Module(), "x")
    with pytest.raises(ValueError, match="Verilog identifier"):
        to_verilog(RegisterSlice(1), "not a name")


def test_remove_self_loops_only_removes_self_assignments():
    text = (
        "  always @(posedge clk)\n    mask <= mask;\n"
        "  always @(posedge clk)\n    \\$esc$1  <= \\$esc$1 ;\n"
        "  always @(posedge clk)\n    state <= next;\n"
        "  always @(posedge clk)\n    mask2 <= mask;\n"
    )
    out, count = remove_self_loops(text)
    assert count == 2
    assert out == "  always @(posedge clk)\n    state <= next;\n" \
                  "  always @(posedge clk)\n    mask2 <= mask;\n"


def test_layout_header_follows_byte_layout():
    for width in WIDTHS:
        layout = byte_layout(width)
        header = stream_layout_header(layout, layout)
        for name in ("data", "nbytes", "last", "error"):
            assert f"#define IN_{name.upper()}_OFFSET {layout[name].offset}\n" in header
            assert f"#define OUT_{name.upper()}_BITS {layout[name].width}\n" in header
        assert f"#define IN_WIDTH {width}\n" in header


def test_verilator_names():
    assert verilator_name("i_stream__valid") == "i_stream___05Fvalid"
    assert verilator_name("a___b") == "a___05F__05Fb"
    assert verilator_name("clk") == "clk"


def test_second_build_reuses_folder(verilator, private_cache, monkeypatch):
    runs = []
    real_run = build._run_verilator

    def counting_run(*args, **kwargs):
        runs.append(args)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(build, "_run_verilator", counting_run)

    first = StreamHarness.for_component(RegisterSlice(1), "slice_w1", 1, flags=QUICK_FLAGS)
    assert first.folder.parent.parent == private_cache
    stamp = first.folder / STAMP
    assert stamp.is_file() and first.binary.is_file()
    assert len(runs) == 1
    mtime = stamp.stat().st_mtime_ns

    again = StreamHarness.for_component(RegisterSlice(1), "slice_w1", 1, flags=QUICK_FLAGS)
    assert again.folder == first.folder
    assert len(runs) == 1, "Verilator ran again for an unchanged design"
    assert stamp.stat().st_mtime_ns == mtime
    assert again.run([b"abc"]).outputs == [b"abc"]

    # Another width is another design: another folder, and nothing built in the first.
    other = StreamHarness.cached_folder(RegisterSlice(2), "slice_w1", 2, flags=QUICK_FLAGS)
    assert other != first.folder and other.parent == first.folder.parent
    flags = StreamHarness.cached_folder(RegisterSlice(1), "slice_w1", 1, flags=("-Wno-fatal",))
    assert flags != first.folder
    # Nothing is left behind but the build itself.
    assert [p.name for p in first.folder.parent.iterdir()] == [first.folder.name]


def test_failed_build_raises_with_log(verilator, private_cache):
    broken = "module broken(input clk);\n  this is not verilog\nendmodule\n"
    with pytest.raises(SimulationError, match=r"could not build 'broken'(.|\n)*syntax error"):
        build_model(broken, "broken", kind="test", flags=QUICK_FLAGS)
    verilator_dir = private_cache / "verilator"
    assert not any(p.name.endswith(".tmp") for p in verilator_dir.iterdir())
    assert any(p.name.endswith(".failed.log") for p in verilator_dir.iterdir())


def test_concurrent_builds_of_one_folder(tmp_path):
    folder = tmp_path / "model"
    barrier = threading.Barrier(2)
    builds = []

    def fake_build(tmp):
        barrier.wait()  # both are building at once
        (tmp / "model.bin").write_text(str(threading.get_ident()))
        builds.append(tmp)

    results = []
    threads = [threading.Thread(target=lambda: results.append(build_once(folder, fake_build)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [folder, folder] and len(builds) == 2
    assert (folder / STAMP).is_file() and (folder / "model.bin").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@functools.cache
def slice_harness(width: int) -> StreamHarness:
    return StreamHarness.for_component(RegisterSlice(width), f"slice_w{width}", width)


@pytest.mark.parametrize("width", WIDTHS)
def test_harness_echoes_messages(verilator, width):
    rng = random.Random(width)
    messages = [b"", b"x", rng.randbytes(width), rng.randbytes(width + 1)]
    messages += [rng.randbytes(rng.randint(0, 100)) for _ in range(50)]
    result = slice_harness(width).run(messages)
    assert result.outputs == messages
    assert result.errors == [False] * len(messages)
    beats = sum(max(1, -(-len(m) // width)) for m in messages)
    assert result.input_stalls == 0
    # One register: each beat comes out the cycle after it went in.
    assert result.active_cycles == beats + 1
    assert result.cycles >= result.active_cycles
    assert result.seconds > 0


def test_harness_checks_width(verilator):
    with pytest.raises(ValueError, match="takes 2-byte beats"):
        StreamHarness.for_component(RegisterSlice(2), "slice_w2", 4)
