"""The offload command: its lists, its errors, and the bench's JSON record."""

import json

import pytest
from click.testing import CliRunner

from offload import kernels
from offload.cli import main
from sim.toolchain import ToolchainError, verilator_root


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_kernels_lists_the_registry():
    result = run("kernels")
    assert result.exit_code == 0
    for spec in kernels.KERNELS:
        assert spec.name in result.output and str(spec.id) in result.output


def test_user_errors_are_one_line_not_a_traceback():
    result = run("ping", "floppy://a")
    assert result.exit_code == 1
    assert result.output.startswith("error: unknown device 'floppy://a'")
    assert "Traceback" not in result.output
    result = run("build", "--board", "no-such-board")
    assert result.exit_code == 2 and "no-such-board" in result.output
    result = run("build", "--board", "icebreaker", "--width", "3", "--kernel-only")
    assert result.exit_code == 1 and "supports widths 1, 2, 4, 8" in result.output


@pytest.fixture
def verilator():
    try:
        verilator_root()
    except ToolchainError as exc:
        pytest.skip(f"Verilator is not available: {exc}")


def test_ping_sim_prints_the_manifest(verilator):
    result = run("ping", "sim")
    assert result.exit_code == 0, result.output
    assert "icebreaker" in result.output and "crc32c" in result.output
    assert "next sequence number" in result.output


def test_bench_json_rows(verilator, tmp_path):
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    out = tmp_path / "bench.json"
    result = run("bench", "--size", "65536", "--board", "icebreaker", "--device", "sim",
                 "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(set(row) >= {"kernel", "what", "value", "unit", "source"}
                        for row in rows)
    assert {row["source"] for row in rows} == {"measured", "derived"}
    by_what = {row["what"]: row for row in rows}
    cpu = by_what["CPU path"]
    assert cpu["source"] == "measured" and cpu["unit"] == "MB/s" and cpu["value"] > 0
    fmax = by_what["fmax on icebreaker, 1 B/cycle"]
    cycles = by_what["gateware cycles per byte, 1 B/cycle"]
    projected = by_what["kernel on icebreaker at fmax"]
    assert projected["source"] == "derived"
    assert projected["value"] == pytest.approx(fmax["value"] / cycles["value"])
    assert 1.0 <= cycles["value"] < 1.01  # one byte a cycle, plus the pipeline's latency
    assert by_what["end to end on sim"]["source"] == "measured"
    # Efficiency is a ratio of byte counts, not a timing: frames of 1 KiB carry 12 bytes of
    # header and CRC, COBS adds one in 254, and a 16-byte response comes back per call.
    assert 95 < by_what["link efficiency, 4 KiB calls, on sim"]["value"] < 100
    for sim in ("Verilator harness", "cocotb + Verilator", "Amaranth simulator"):
        row = next(r for r in rows if r["what"].startswith(sim))
        assert row["source"] == "measured" and row["unit"] == "cycles/s" and row["value"] > 0


def test_serve_runs_a_virtual_board_that_a_device_url_reaches(verilator):
    import re
    import subprocess
    import sys

    import offload

    command = [sys.executable, "-m", "offload.cli", "serve", "--board", "icebreaker"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        url = None
        for line in server.stdout:
            found = re.search(r"socket://127\.0\.0\.1:\d+", line)
            if found:
                url = found.group(0)
                break
        assert url, "offload serve never said where it serves"
        with offload.open(url, fallback="never") as dev:
            assert dev.backend.manifest.board == "icebreaker"
            assert dev.crc32c(b"123456789") == 0xE3069283
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_cache_lists_and_clears(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path))
    (tmp_path / "verilator" / "model-a").mkdir(parents=True)
    (tmp_path / "verilator" / "model-a" / "model").write_bytes(bytes(2_000_000))
    result = run("cache")
    assert result.exit_code == 0 and "verilator" in result.output and "2.0" in result.output
    result = run("cache", "--clear")
    assert result.exit_code == 0 and not any(tmp_path.iterdir())
