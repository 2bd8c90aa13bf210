"""Running ``offload bench``: each step measured in this run, then what follows from them."""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hdl.link import protocol as p

from .bench import CITED, DERIVED, MEASURED, BenchReport, measure_amaranth_sim, time_call
from .build import progress_bar
from .errors import KernelError, OffloadError
from .gateware import board_width, kernel_label
from .kernels import KernelSpec, Response, same_result
from .link.codec import wire_size

__all__ = ["run_bench", "print_report"]

# Cycles the Verilator harness runs for its speed figure: long enough that process start and
# file I/O are noise (a few hundred milliseconds at the harness's speed).
_HARNESS_SPEED_CYCLES = 2_000_000
_COCOTB_CYCLES = 20_000
_AMARANTH_CYCLES = 4_000


def run_bench(specs: Sequence[KernelSpec], *, size: int, boards: Sequence[str] | None = None,
              device: str | None = None, console: Console | None = None) -> BenchReport:
    """Measure ``specs`` on ``size`` bytes and project them onto ``boards`` (default: all).

    The boards and the device are checked before anything is measured.
    """
    from boards import BOARDS, get_board

    from .device import check_spec

    board_names = list(boards) if boards else list(BOARDS)
    for name in board_names:
        get_board(name)
    if device is not None:
        check_spec(device)
    report = BenchReport()
    steps = len(specs) * (2 + 2 * len(board_names) + 3) + (2 if device else 0)
    with progress_bar(console) as progress:
        task = progress.add_task("bench", total=steps)

        def step(text: str) -> None:
            progress.update(task, description=text)

        def done() -> None:
            progress.advance(task)

        for spec in specs:
            _bench_kernel(report, spec, size, board_names, step, done)
        if device:
            _bench_device(report, specs, size, device, step, done)
    return report


def _bench_kernel(report: BenchReport, spec: KernelSpec, size: int, board_names, step, done):
    from boards import ETH_BOARDS, get_board
    from boards.build import BuildError

    op_name, args = spec.workload(spec.resolve(), size, random.Random(0))
    op = spec.operation(op_name)
    label = spec.name if len(spec.operations) == 1 else f"{spec.name}.{op.name}"
    messages = op.encode(spec.resolve(), *args)
    size = sum(len(m) for m in messages)

    step(f"{label}: CPU path")
    seconds = time_call(lambda: spec.cpu(*args, op=op.name))
    cpu_mbs = size / seconds / 1e6
    report.add(spec.name, "CPU path", cpu_mbs, "MB/s", MEASURED,
               f"{spec.model.__module__}, {label} on {size} request bytes, best of 5 timed "
               "batches")
    done()

    extra = spec.bench(spec.resolve(), op.name, args) if spec.bench is not None else None
    items, unit = (extra["items"], extra["unit"]) if extra else (0, "")
    # A hook's rows are measured unless they say otherwise (a fifth item: derived or cited).
    for what, value, row_unit, note, *source in (extra or {}).get("rows", ()):
        report.add(spec.name, what, value, row_unit, source[0] if source else MEASURED, note)

    widths = sorted({board_width(b, spec) for b in [*board_names, *ETH_BOARDS]}
                    | {spec.default_width})
    cycles_per_byte: dict[int, float] = {}
    result_cycles: dict[int, int] = {}
    response_len = 0
    for width in widths:
        step(f"{label}: gateware at {width} B/cycle in Verilator")
        params = spec.resolve(spec.width_params(width))
        expected = spec.cpu(*args, op=op.name, params=params)
        harness = _harness(spec, width)
        result = harness.run(messages)
        responses = [Response(out, bool(err)) for out, err in zip(result.outputs, result.errors,
                                                                   strict=True)]
        try:
            got = spec.result(op, params, responses, args, {})
        except (KernelError, ValueError) as exc:
            got = exc
        if not same_result(got, expected):
            raise OffloadError(f"{label} at width {width} gave {got!r} in simulation, the "
                               f"CPU path {expected!r}: the gateware is wrong")
        cycles_per_byte[width] = result.active_cycles / max(size, 1)
        result_cycles[width] = result.active_cycles
        response_len = sum(len(r.data) for r in responses)
        report.add(spec.name, f"gateware cycles per byte, {width} B/cycle",
                   cycles_per_byte[width], "cycles/B", MEASURED,
                   f"Verilator harness, {result.active_cycles} cycles from first beat to "
                   f"result for {size} request bytes ({label})")
        if items:
            report.add(spec.name, f"gateware cycles per {unit[:-1]}, {width} B/cycle",
                       result.active_cycles / items, "cycles", MEASURED,
                       f"Verilator harness, {result.active_cycles} cycles for {items} {unit} "
                       f"({label})")
    done()

    for board_name in board_names:
        board = get_board(board_name)
        width = board_width(board_name, spec)
        step(f"{spec.name}: build for {board_name} (cached after the first run)")
        try:
            build = _build(board_name, spec, width)
        except BuildError as exc:  # it does not fit this board: say so, bench the others
            first = str(exc).splitlines()[0]
            report.skipped.append(f"{spec.name} on {board_name}: the build failed ({first})")
            done()
            done()
            continue
        report.add(spec.name, f"fmax on {board_name}, {width} B/cycle", build.fmax_mhz, "MHz",
                   MEASURED, f"nextpnr timing analysis of {build.bitstream.name} "
                   f"({'cached' if build.cached else 'built now'})")
        done()
        kernel_mbs = build.fmax_mhz / cycles_per_byte[width]
        report.add(spec.name, f"kernel on {board_name} at fmax", kernel_mbs, "MB/s", DERIVED,
                   f"fmax {build.fmax_mhz:.1f} MHz / {cycles_per_byte[width]:.4f} cycles/B")
        # The clock a device runs at: for the board's link rate, from its PLL where needed;
        # a kernel that alone misses that clock is in a device at the fallback rate and clock.
        baud, clock_hz = board.link_for(build.fmax_mhz * 1e6)
        clock_mhz = clock_hz / 1e6
        at_clock = clock_mhz / cycles_per_byte[width]
        report.add(spec.name, f"kernel on {board_name} at its {clock_mhz:g} MHz clock",
                   at_clock, "MB/s", DERIVED,
                   f"device clock / {cycles_per_byte[width]:.4f} cycles/B"
                   + ("" if baud == board.link_baud else
                      f"; the kernel alone reaches {build.fmax_mhz:.1f} MHz, short of the "
                      f"{board.device_hz() / 1e6:g} MHz of {board.link_baud:,} baud, so its "
                      f"device runs at {baud:,} baud"))
        link_mbs = baud / 10 / 1e6
        report.add(spec.name, f"{board_name} link (UART {baud:,} baud, 8N1)",
                   link_mbs, "MB/s", DERIVED, "baud / 10 bits per byte, before framing")
        # What a call through the board would see: frames of the largest payload on the link,
        # and the round trip of a small call (both ways on the wire, plus the kernel).
        framing = p.MAX_PAYLOAD / wire_size(p.MAX_PAYLOAD)
        report.add(spec.name, f"end to end on {board_name} (link-bound)",
                   min(link_mbs * framing, at_clock), "MB/s", DERIVED,
                   f"link x {100 * framing:.1f}% framing efficiency at {p.MAX_PAYLOAD} B "
                   "frames (COBS, header, CRC), capped by the kernel at the device clock")
        small = 64
        small_response = max(1, response_len * small // max(size, 1))
        wire = wire_size(small) + wire_size(small_response)
        kernel_cycles = small * cycles_per_byte[width] + 16
        report.add(spec.name, f"{small}-byte call round trip on {board_name}",
                   1e6 * (wire * 10 / baud + kernel_cycles / clock_hz), "us",
                   DERIVED, f"{wire} wire bytes at {baud:,} baud + ~{kernel_cycles:.0f}"
                   f" kernel cycles at {clock_mhz:g} MHz")
        report.add(spec.name, f"CPU path / kernel on {board_name} at fmax", cpu_mbs / kernel_mbs,
                   "x", DERIVED, "how many times faster the CPU path is (below 1: the kernel is)")
        if items:
            per_item = result_cycles[width] / items
            report.add(spec.name, f"{unit} per second on {board_name} at fmax",
                       build.fmax_mhz * 1e6 / per_item, f"{unit}/s", DERIVED,
                       f"fmax {build.fmax_mhz:.1f} MHz / {per_item:.1f} cycles per {unit[:-1]}")
            report.add(spec.name, f"{unit} per second on {board_name} at its "
                       f"{clock_mhz:g} MHz clock", clock_hz / per_item, f"{unit}/s",
                       DERIVED, f"device clock / {per_item:.1f} cycles per {unit[:-1]}")
            if "reference" in extra:
                name, rate = extra["reference"]
                report.add(spec.name, f"{name} / kernel on {board_name} at fmax",
                           rate / (build.fmax_mhz * 1e6 / per_item), "x", DERIVED,
                           f"{unit} per second on this CPU / at fmax (below 1: the kernel is "
                           "faster)")
            wire_per_item = (wire_size(p.MAX_PAYLOAD) / p.MAX_PAYLOAD) * \
                (size + response_len) / items
            report.add(spec.name, f"{unit} per second through the {board_name} link",
                       baud / 10 / wire_per_item, f"{unit}/s", DERIVED,
                       f"baud / 10 / {wire_per_item:.1f} wire bytes per {unit[:-1]} "
                       "(request and response, framed)")
        done()

    for board in ETH_BOARDS.values():
        width = board_width(board.name, spec)
        _gigabit_rows(report, spec, board, cycles_per_byte[width], response_len / max(size, 1))

    width = spec.default_width
    step(f"{spec.name}: simulation speeds at {width} B/cycle")
    harness = _harness(spec, width)
    _, speed_args = spec.workload(spec.resolve(), 4096, random.Random(1))
    speed_messages = op.encode(spec.resolve(), *speed_args)
    per_message = max(1, sum(len(m) for m in speed_messages) // width)
    result = harness.run(speed_messages * max(1, _HARNESS_SPEED_CYCLES // per_message))
    report.add(spec.name, f"Verilator harness speed, {width} B/cycle",
               result.cycles_per_second, "cycles/s", MEASURED,
               f"{result.cycles:,} cycles in {result.seconds:.3f} s (C++ loop, -O3)")
    done()
    cocotb_cps = _cocotb_speed(spec, width)
    report.add(spec.name, f"cocotb + Verilator speed, {width} B/cycle", cocotb_cps, "cycles/s",
               MEASURED, f"{_COCOTB_CYCLES:,} cycles, the testbench setting and reading ports "
               "every cycle")
    done()
    cycles, seconds = measure_amaranth_sim(spec, width, _AMARANTH_CYCLES)
    report.add(spec.name, f"Amaranth simulator speed, {width} B/cycle", cycles / seconds,
               "cycles/s", MEASURED, f"{cycles:,} cycles in {seconds:.2f} s")
    done()


def _harness(spec: KernelSpec, width: int):
    from sim.harness import StreamHarness

    params = spec.width_params(width)
    return StreamHarness.for_component(lambda: spec.component(**params),
                                       kernel_label(spec, spec.resolve(params)), width)


def _build(board_name: str, spec: KernelSpec, width: int):
    from .build import build_kernel

    return build_kernel(board_name, spec.name, width=width)


def _cocotb_speed(spec: KernelSpec, width: int) -> float:
    from hdl.stream import byte_layout
    from sim.cocotb_runner import run_cocotb

    layout = byte_layout(width)
    with tempfile.TemporaryDirectory(prefix="offload-cocotb-") as tmp:
        out = Path(tmp) / "speed.json"
        params = spec.width_params(width)
        run_cocotb(lambda: spec.component(**params), kernel_label(spec, spec.resolve(params)),
                   "sim.cocotb_speed",
                   Path(tmp), parameters={"width": width, "cycles": _COCOTB_CYCLES,
                                          "nbytes_offset": layout["nbytes"].offset,
                                          "last_offset": layout["last"].offset},
                   extra_env={"OFFLOAD_SPEED_OUT": str(out)})
        record = json.loads(out.read_text())
    return record["cycles"] / record["seconds"]


#: Bytes on Gigabit Ethernet's line per datagram besides the UDP payload: the Ethernet header
#: and FCS (18), IPv4 and UDP headers (28), the preamble and SFD (8) and the gap (12).
ETH_OVERHEAD = 18 + 28 + 8 + 12
#: Gigabit Ethernet's line rate, bytes a second.
GIGABIT = 125e6


def _gigabit_rows(report: BenchReport, spec: KernelSpec, board, cycles_per_byte: float,
                  response_ratio: float) -> None:
    """Derived rows of ``spec`` on the Ethernet ``board``: the link, the kernel at the core
    clock, end to end (and which bounds it), and a 64-byte call's round trip on the wire."""
    name, core_mhz = board.name, board.core_hz / 1e6
    full = p.UDP_MAX_PAYLOAD + p.HEADER_SIZE + p.CRC_SIZE  # a frame that fills a datagram
    link_mbs = GIGABIT / 1e6 * p.UDP_MAX_PAYLOAD / (full + ETH_OVERHEAD)
    report.add(spec.name, f"{name} link (UDP on Gigabit Ethernet)", link_mbs, "MB/s", DERIVED,
               f"125 MB/s line rate x {p.UDP_MAX_PAYLOAD} payload bytes / {full + ETH_OVERHEAD}"
               " on the line a datagram (offload header and CRC, Ethernet, IPv4 and UDP "
               "headers, FCS, preamble and gap)")
    at_core = core_mhz / cycles_per_byte
    report.add(spec.name, f"kernel on {name} at its {core_mhz:g} MHz core clock", at_core,
               "MB/s", DERIVED, f"core clock / {cycles_per_byte:.4f} cycles/B (the crc32c "
               "device meets this clock on this board; devices of other kernels are not built "
               "for it yet)")
    bound = "kernel-bound" if at_core < link_mbs else "link-bound"
    report.add(spec.name, f"end to end on {name}", min(link_mbs, at_core), "MB/s", DERIVED,
               f"{bound}: the lesser of the link and the kernel at the core clock")
    small = 64

    def line(payload: int) -> int:  # bytes on the line of a call's datagram, padded to 64
        return max(64, p.HEADER_SIZE + payload + p.CRC_SIZE + 46) + 20

    response = max(1, round(small * response_ratio))
    kernel_cycles = small * cycles_per_byte + 16
    wire = line(small) + line(response)
    report.add(spec.name, f"{small}-byte call round trip on {name}",
               1e6 * (wire / GIGABIT + kernel_cycles / board.core_hz), "us", DERIVED,
               f"{wire} bytes on the line both ways at 1 Gb/s + ~{kernel_cycles:.0f} kernel "
               f"cycles at {core_mhz:g} MHz; not counting the host's network stack or the "
               "device's pipeline")


def _bench_device(report: BenchReport, specs, size: int, device_spec: str, step, done):
    from .device import open_device

    step(f"opening {device_spec}")
    # A virtual board is built with the kernels benched (some are not in a device by default).
    kernels = [spec.name for spec in specs] if virtual_spec(device_spec) else None
    with open_device(device_spec, fallback="never", kernels=kernels) as device:
        done()
        for spec in specs:
            if spec.name not in device.gateware_kernels:
                report.skipped.append(f"{spec.name}: not on {device_spec}")
                continue
            step(f"{spec.name}: end to end on {device_spec}")
            op_name, args = spec.workload(device.params(spec.name), size, random.Random(0))
            seconds, payload, wire = _through_link(device, spec, op_name, [args])
            report.add(spec.name, f"end to end on {device_spec}", payload / seconds / 1e6,
                       "MB/s", MEASURED, f"{payload} payload bytes (request and response) "
                       f"through the link, {seconds:.3f} s")
            report.add(spec.name, f"link efficiency on {device_spec}", 100 * payload / wire,
                       "%", MEASURED,
                       f"payload bytes / wire bytes both ways ({payload} / {wire})")
            calls = [spec.workload(device.params(spec.name), 4096, random.Random(i))[1]
                     for i in range(8)]
            ether = getattr(device.virtual_board, "stats", None)  # a virtual Ethernet board

            def counts(ether=ether):
                return {**ether(), **device.backend.counters()} if ether else {}

            before = counts()
            _, payload, wire = _through_link(device, spec, op_name, calls)
            report.add(spec.name, f"link efficiency, 4 KiB calls, on {device_spec}",
                       100 * payload / wire, "%", MEASURED,
                       f"payload bytes / wire bytes both ways, {len(calls)} calls of "
                       f"{op_name} on 4 KiB requests ({payload} / {wire})")
            if ether:
                _ethernet_rows(report, spec, device_spec, before, counts(), len(calls))
        done()


def virtual_spec(device_spec: str) -> bool:
    """Whether ``device_spec`` is a virtual board (``sim``, ``udp-sim``, ``sim:BOARD``)."""
    from .device import SIM_BOARDS

    return device_spec in SIM_BOARDS or device_spec.startswith("sim:")


def _ethernet_rows(report: BenchReport, spec: KernelSpec, device_spec: str, before: dict,
                   after: dict, calls: int) -> None:
    """What a virtual Ethernet board's wire carried for ``calls`` 4 KiB calls: the requests'
    payload over the bytes of their Ethernet frames (headers, FCS), and on the line (preamble
    and gap too)."""
    delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
    frames, payload = delta["rx_frames"], delta["rx_payload"]
    frame_bytes = delta["rx_wire_bytes"] - 8 * frames
    useful = delta["payload_bytes_out"]  # the requests' own bytes, as the host counted them
    assert useful <= payload
    report.add(spec.name, f"Ethernet efficiency toward {device_spec}, 4 KiB calls", 100 * useful
               / frame_bytes, "%", MEASURED,
               f"{calls} calls: {useful} request payload bytes / {frame_bytes} bytes of "
               f"{frames} Ethernet frames (headers and FCS), counted on the virtual wire; on "
               f"the line with preamble and gap, {100 * useful / (frame_bytes + 20 * frames):.1f}%")


def _through_link(device, spec: KernelSpec, op: str, calls: list[tuple]
                  ) -> tuple[float, int, int]:
    """Call ``spec.op`` on each args tuple through ``device``: (seconds, payload bytes both
    ways, wire bytes both ways).

    Each result is checked against the CPU path (a stateful kernel is reset first, so both
    start from power-on): a wrong answer is never timed as a fast one.
    """
    params = device.params(spec.name)
    expected = []
    model = spec.model(params)
    for args in calls:
        try:
            expected.append(spec.run_on_model(model, spec.operation(op), params, args, {}))
        except KernelError as exc:
            expected.append(exc)
    if spec.stateful:
        device.reset(spec.name)
    before = dict(device.backend.counters())
    start = time.perf_counter()
    got = []
    for args in calls:
        try:
            got.append(device.call(spec.name, *args, op=op))
        except KernelError as exc:
            got.append(exc)
    seconds = time.perf_counter() - start
    after = device.backend.counters()
    if not same_result(got, expected):
        raise OffloadError(f"{spec.name}.{op} on {device.spec} disagrees with the CPU path")
    delta = {k: after.get(k, 0) - before.get(k, 0)
             for k in ("wire_bytes_out", "wire_bytes_in", "payload_bytes_out",
                       "payload_bytes_in")}
    wire = delta["wire_bytes_out"] + delta["wire_bytes_in"]
    payload = delta["payload_bytes_out"] + delta["payload_bytes_in"]
    return seconds, payload, max(wire, 1)


def print_report(report: BenchReport, console: Console) -> None:
    table = Table(title="offload bench")
    for column, justify in (("kernel", "left"), ("what", "left"), ("value", "right"),
                            ("unit", "left"), ("source", "left"), ("how", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in report.rows:
        style = "" if row.source == MEASURED else "italic"
        table.add_row(row.kernel, row.what, _format(row.value), row.unit,
                      f"[{style}]{row.source}[/]" if style else row.source, row.note)
    console.print(table)
    console.print(f"[italic]{DERIVED}[/] figures are computed from the measured ones as shown; "
                  "fmax is nextpnr's static timing estimate of the routed design; "
                  f"[italic]{CITED}[/] figures are published ones, quoted for scale.")
    for line in report.skipped:
        console.print(f"skipped: {line}")


def _format(value: float) -> str:
    if value >= 1e5:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.1f}"
    return f"{value:#.3g}" if value < 10 else f"{value:.2f}"
