"""The ``offload`` command: list kernels, build bitstreams, benchmark, talk to devices."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import kernels as registry
from .errors import OffloadError

# Piped output (CI logs, files) gets room for the bench table instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class OffloadGroup(click.Group):
    """Errors a user can cause end the command with one line, not a traceback.

    Every such error is an :class:`OffloadError`, whichever layer raised it (``boards``,
    ``sim`` and ``hdl`` subclass the same root); click reports its own usage errors itself.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OffloadError as exc:
            # Escaped: a message is text, not markup ("pip install 'offload[plot]'"); not
            # wrapped: one error, one line, however narrow the terminal.
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            sys.exit(1)


@click.group(cls=OffloadGroup)
@click.version_option(package_name="offload")
def main() -> None:
    """offload: network-service functions in FPGA gateware, called from Python."""


@main.command("kernels")
def kernels_cmd() -> None:
    """List the kernels: id, version, operations, parameters and where each can run."""
    from boards import BOARDS

    table = Table(title="offload kernels")
    for column in ("kernel", "id", "version", "operations", "parameters (default)", "state",
                   "runs on", "what"):
        table.add_column(column, overflow="fold")
    places = ["cpu", "sim", *BOARDS]
    for spec in registry.KERNELS:
        params = "\n".join(f"{name}={param.describe()}" for name, param in spec.params.items())
        for board, values in spec.board_params.items():
            params += f"\n{board}: " + ", ".join(f"{k}={v}" for k, v in values.items())
        table.add_row(spec.name, str(spec.id), str(spec.version),
                      ", ".join(op.name for op in spec.operations), params or "-",
                      "stateful" if spec.stateful else "stateless", ", ".join(places),
                      spec.summary)
    console.print(table)


def _kernel_names() -> list[str]:
    return [spec.name for spec in registry.KERNELS]


class KernelArg(click.ParamType):
    """``NAME`` or ``NAME:key=value,...``: a kernel and the parameters to build it with."""

    name = "KERNEL[:key=value,...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, _, rest = value.partition(":")
        try:
            spec = registry.get(name)
        except OffloadError as exc:
            self.fail(str(exc), param, ctx)
        values: dict[str, str] = {}
        for item in filter(None, rest.split(",")):
            key, eq, val = item.partition("=")
            if not eq or not key or not val:
                self.fail(f"{item!r} is not key=value (in {value!r})", param, ctx)
            values[key.strip()] = val.strip()
        try:
            spec.resolve(values)  # names and limits checked now, before any build
        except OffloadError as exc:
            self.fail(str(exc), param, ctx)
        return (name, values)


def _board_names(ethernet: bool = False) -> list[str]:
    """The UART boards; with ``ethernet``, the Ethernet boards too."""
    from boards import BOARDS, ETH_BOARDS

    return [*BOARDS, *ETH_BOARDS] if ethernet else list(BOARDS)


def _mac(ctx, param, value):
    if value is None:
        return None
    digits = value.replace(":", "").replace("-", "")
    if not re.fullmatch(r"[0-9a-fA-F]{12}", digits):
        raise click.BadParameter(f"a MAC address is six hex bytes, 02:00:00:00:00:50, not "
                                 f"{value!r}")
    mac = int(digits, 16)
    if mac >> 40 & 1:
        raise click.BadParameter(f"{value} is a multicast address: a device's must be unicast "
                                 "(its first byte even)")
    return mac


def _ipv4(ctx, param, value):
    if value is None:
        return None
    import ipaddress

    try:
        return int(ipaddress.IPv4Address(value))
    except ValueError:
        raise click.BadParameter(f"an IPv4 address is four numbers, 10.0.0.50, not {value!r}"
                                 ) from None


@main.command("build")
@click.option("--board", "board", required=True, type=click.Choice(_board_names(True)),
              help="Board to build for.")
@click.option("--kernel", "kernel_args", multiple=True, type=KernelArg(),
              help="Kernel in the device, with parameters as NAME:key=value,... (repeat for "
                   "several; default: every kernel a device has by default, at the board's "
                   "defaults).")
@click.option("--width", type=int, default=None,
              help="Kernel beat width in bytes (default: the board's).")
@click.option("--kernel-only", is_flag=True,
              help="Build one kernel alone between the pins (its own fmax), not the device.")
@click.option("--per-kernel", is_flag=True,
              help="Also build each kernel of the device alone (cached), and show its own "
                   "fmax and resources beside the device's.")
@click.option("--baud", type=click.IntRange(min=1), default=None,
              help="The link's rate in baud. The device's clock is chosen to divide it: the "
                   "oscillator, or the board's PLL. Default: the board's (3,000,000), or its "
                   "fallback (1,000,000, from the oscillator) for a device too slow for the "
                   "PLL's clock.")
@click.option("--mac", callback=_mac, default=None,
              help="An Ethernet board's MAC address (default: the board's, 02:00:00:00:00:50).")
@click.option("--ip", callback=_ipv4, default=None,
              help="An Ethernet board's IPv4 address (default: the board's, 10.0.0.50).")
@click.option("--udp-port", type=click.IntRange(1, 65535), default=None,
              help="An Ethernet board's UDP port (default: the board's, 7777).")
@click.option("--modules/--no-modules", default=True, show_default=True,
              help="Show a device's cells by module: the link, its parts and each kernel "
                   "(a second Yosys run that keeps the hierarchy, kept with the build).")
@click.option("--build-dir", type=click.Path(path_type=Path), default=None,
              help="Where to build (default: the cache, keyed by the design's hash).")
def build_cmd(board: str, kernel_args: tuple[tuple[str, dict], ...], width: int | None,
              kernel_only: bool, per_kernel: bool, baud: int | None, mac: int | None,
              ip: int | None, udp_port: int | None, modules: bool,
              build_dir: Path | None) -> None:
    """Build a bitstream and report fmax against the board clock and resource use.

    By default the device: the UART link at the board's rate, the link bridge and the kernels.
    """
    from boards import get_board

    from .build import (
        build_device,
        build_kernel,
        check_build_dir,
        print_kernels,
        print_modules,
        print_report,
        progress_bar,
    )

    check_build_dir(build_dir, "--build-dir")  # before a build of minutes, not in its middle
    if kernel_only and per_kernel:
        raise click.UsageError("--per-kernel is for a device; --kernel-only builds one kernel")
    if kernel_only and baud is not None:
        raise click.UsageError("--baud is the device's link; --kernel-only builds one kernel")
    board_record = get_board(board)
    address = None
    if board_record.link == "udp":
        if baud is not None:
            raise click.UsageError(f"{board}'s link is UDP over Ethernet: it has no --baud")
        address = (board_record.mac if mac is None else mac,
                   board_record.ip if ip is None else ip,
                   board_record.udp_port if udp_port is None else udp_port)
    elif (mac, ip, udp_port) != (None, None, None):
        raise click.UsageError(f"--mac, --ip and --udp-port are an Ethernet board's; {board}'s "
                               "link is a UART")
    kernel_names = [name for name, _ in kernel_args]
    params = {name: values for name, values in kernel_args if values}
    alone, fits = [], []
    with progress_bar(console) as progress:
        if kernel_only:
            if len(kernel_names) > 1:
                raise click.UsageError("--kernel-only builds one kernel; name one --kernel")
            kernel = kernel_names[0] if kernel_names else _kernel_names()[0]
            report = build_kernel(board, kernel, width=width, params=params.get(kernel),
                                  build_dir=build_dir, progress=progress)
        else:
            from .gateware import device_design

            design = device_design(board, kernel_names, width, params=params, baud=baud,
                                   address=address)
            report = build_device(board, kernel_names, width=width, params=params,
                                  build_dir=build_dir, progress=progress, baud=baud,
                                  address=address)
            fallback = getattr(board_record, "fallback_baud", None)
            if (baud is None and fallback is not None and not report.meets_board_clock
                    and fallback != design.link_baud):
                # Too slow for the PLL's clock: the link at the fallback rate, from the
                # oscillator (a host not told the rate tries both).
                progress.console.print(
                    f"{design.name} reaches {report.fmax_mhz:.1f} MHz, short of the "
                    f"{design.clock_hz / 1e6:g} MHz that {design.link_baud:,} baud runs at: "
                    f"building it at {fallback:,} baud ({report.bitstream.parent} kept)")
                baud = fallback
                design = device_design(board, kernel_names, width, params=params, baud=baud)
                report = build_device(board, kernel_names, width=width, params=params,
                                      build_dir=build_dir, progress=progress, baud=baud)
            if modules:
                from boards.build import BuildError, module_resources

                task = progress.add_task(f"{board}: {design.name}: cells by module", total=None)
                try:
                    module_resources(report)  # kept with the build: printed below
                except BuildError as exc:  # the bitstream is good: say so, and go on
                    modules = False
                    progress.console.print(f"[yellow]cells by module not shown:[/] "
                                           f"{str(exc).splitlines()[0]}")
                progress.remove_task(task)
            if per_kernel:
                for spec, values in design.kernels:
                    alone.append((spec.name, build_kernel(board, spec.name,
                                                          params=dict(values),
                                                          progress=progress)))
                    if spec.fit is not None:
                        unit, amount, points = spec.fit(dict(values))
                        measured = [(build_kernel(board, spec.name, params=dict(point),
                                                  progress=progress), n)
                                    for point, n in points]
                        fits.append((spec.name, unit, amount, measured))
    print_report(report, console)
    if modules and not kernel_only:
        print_modules(report, {spec.id: spec.name for spec, _ in design.kernels}, console)
    if alone:
        print_kernels(report, alone, console, fits)
    if not kernel_only and address is not None:
        import ipaddress

        url = f"udp://{ipaddress.IPv4Address(address[1])}:{address[2]}"
        console.print(f"  link: UDP on Gigabit Ethernet (RGMII at 125 MHz), MAC "
                      f"{':'.join(f'{address[0] >> 8 * k & 0xFF:02x}' for k in range(5, -1, -1))}"
                      f", at {url}; the core at {design.clock_hz / 1e6:g} MHz from the PLL "
                      f"({board_record.clock_hz / 1e6:g} MHz oscillator). Reach it with "
                      f"offload ping {url}")
    elif not kernel_only:
        oscillator = get_board(board).clock_hz
        clock = (f"the {oscillator / 1e6:g} MHz oscillator" if design.clock_hz == oscillator
                 else f"{design.clock_hz / 1e6:g} MHz from the PLL "
                      f"({oscillator / 1e6:g} MHz oscillator)")
        console.print(f"  link: UART at {design.link_baud:,} baud "
                      f"({design.link_baud / 10 / 1e3:,.0f} kB/s before framing), "
                      f"{design.clock_hz // design.link_baud} cycles a bit of {clock}")


@main.command("bench")
@click.option("--kernel", "kernel_names", multiple=True, type=click.Choice(_kernel_names()),
              help="Kernel(s) to bench (default: all).")
@click.option("--size", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Bytes of input per call.")
@click.option("--board", "board_names", multiple=True, type=click.Choice(_board_names()),
              help="Boards to project onto (default: all; builds are cached).")
@click.option("--device", "device_spec", default=None,
              help="Also run end to end on this device ('sim', a serial port, ...).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the rows as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG plot here (needs matplotlib).")
@click.option("--sweep", "sweep", default=None, metavar="NAME=V1,V2,...",
              help="With one --kernel: build it at each value of one parameter on each board, "
                   "to the first value a board does not hold, and show how fmax, logic and the "
                   "rate at fmax grow (e.g. --kernel pifo --sweep capacity=8,16,32,64).")
def bench_cmd(kernel_names, size, board_names, device_spec, json_path, plot_path,
              sweep) -> None:
    """Measure the CPU path, the gateware in simulation, and project onto each board."""
    from .bench import check_output_file, check_plot_support, write_json, write_plot
    from .bench_run import print_report, run_bench
    from .build import check_build_dir
    from .device import check_spec

    if sweep is not None:
        if len(kernel_names) != 1 or device_spec is not None:
            raise click.UsageError("--sweep takes exactly one --kernel, and no --device")
        from .sweep import parse_sweep

        try:
            name, values = parse_sweep(registry.get(kernel_names[0]), sweep)
        except registry.ParamError as exc:
            raise click.BadParameter(str(exc), param_hint="--sweep") from None
    # Everything a bench of minutes could trip over at its end is checked before it starts.
    if device_spec is not None:
        check_spec(device_spec)
    if json_path:
        check_output_file(json_path, "--json")
    if plot_path:
        check_output_file(plot_path, "--plot")
        check_plot_support()
    check_build_dir(None)  # the cache, where the models and bitstreams go
    if sweep is not None:
        from boards import BOARDS

        from .sweep import run_sweep, write_sweep_plot

        report = run_sweep(registry.get(kernel_names[0]), name, values,
                           boards=list(board_names) or sorted(BOARDS), console=console)
        print_report(report, console)
        if json_path:
            write_json(report, json_path)
            console.print(f"wrote {json_path}")
        if plot_path:
            write_sweep_plot(report, name, plot_path)
            console.print(f"wrote {plot_path}")
        return
    specs = [registry.get(n) for n in kernel_names] or list(registry.KERNELS)
    report = run_bench(specs, size=size, boards=list(board_names) or None, device=device_spec,
                       console=console)
    print_report(report, console)
    if json_path:
        write_json(report, json_path)
        console.print(f"wrote {json_path}")
    if plot_path:
        write_plot(report, plot_path)
        console.print(f"wrote {plot_path}")


@main.command("ping")
@click.argument("device_spec", metavar="DEVICE")
@click.option("--baud", type=int, default=None,
              help="UART rate (default: try the boards' link rate, 3,000,000, then their "
                   "fallback, 1,000,000).")
def ping_cmd(device_spec: str, baud: int | None) -> None:
    """Open DEVICE ('sim', 'sim:BOARD', a serial port, udp://HOST:PORT) and print its
    manifest."""
    import time

    from .device import open_device

    start = time.perf_counter()
    with open_device(device_spec, fallback="never", baudrate=baud) as device:
        opened = time.perf_counter() - start
        if device.backend is None:
            console.print(f"{device_spec}: the CPU (no gateware)")
            return
        manifest = device.backend.manifest
        start = time.perf_counter()
        device.backend.system(0)
        rtt = time.perf_counter() - start
        console.print(f"[bold]{device_spec}[/]: {manifest.board}, {manifest.clock_hz / 1e6:g} MHz, "
                      f"link v{manifest.link}, build {manifest.build}")
        console.print(f"  max payload {manifest.max_payload} B, max response "
                      f"{manifest.max_response} B, replay window {manifest.window}; next "
                      f"sequence number {manifest.expected_seq}")
        console.print(f"  opened in {opened:.2f} s, manifest round trip {rtt * 1e3:.2f} ms")
        table = Table(title="kernels on the device")
        for column in ("kernel", "id", "version", "params", "offload has it"):
            table.add_column(column)
        for entry in manifest.kernels:
            usable = "yes" if entry.get("name") in device.gateware_kernels else "no"
            table.add_row(str(entry.get("name")), str(entry.get("id")),
                          str(entry.get("version")), json.dumps(entry.get("params", {})), usable)
        console.print(table)


@main.command("serve")
@click.option("--board", default="icebreaker", show_default=True,
              type=click.Choice(_board_names()), help="Board whose gateware to run.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port on 127.0.0.1 (0: any free port).")
@click.option("--kernel", "kernel_args", multiple=True, type=KernelArg(),
              help="Kernel on the virtual board, with parameters as NAME:key=value,... "
                   "(repeat for several; default: every kernel a device has by default).")
def serve_cmd(board: str, port: int, kernel_args: tuple[tuple[str, dict], ...]) -> None:
    """Run a virtual board: the board's gateware in Verilator, its link on a TCP port."""
    from .gateware import device_design

    if port:
        _check_port_free(port)  # before building the virtual board, which can take minutes
    kernel_names = [name for name, _ in kernel_args] or None
    params = {name: values for name, values in kernel_args if values}
    with console.status(f"building the {board} virtual board (cached after the first run)"):
        vboard = device_design(board, kernel_names, params=params).virtual_board(port=port)
    vboard.start()
    console.print(f"virtual {board} serving on [bold]{vboard.url}[/]; "
                  f"use offload.open('{vboard.url}'). Ctrl-C stops it.")
    try:
        while vboard.running:
            time.sleep(0.5)
        console.print("[red]the virtual board stopped[/]")
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        run = vboard.stop()
        if run is not None:
            console.print(f"ran {run.cycles:,} cycles in {run.seconds:.1f} s")


def _check_port_free(port: int) -> None:
    import errno
    import socket

    # Bound as the harness binds it (SO_REUSEADDR, so a port in TIME_WAIT is not "in use").
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise OffloadError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; choose "
                                   "another --port, or 0 for any free one") from None
            raise OffloadError(f"port {port} on 127.0.0.1 is in use by another program: choose "
                               "another --port, or 0 for any free one") from None


@main.group("demo")
def demo_cmd() -> None:
    """Demonstrations that run end to end on virtual boards (or on boards you name)."""


@demo_cmd.command("paxos")
@click.option("--acceptors", type=click.IntRange(1, 8), default=3, show_default=True,
              help="Acceptor virtual boards to start.")
@click.option("--device", "urls", multiple=True, metavar="URL",
              help="An acceptor device to use instead (repeat for each; e.g. socket://...).")
@click.option("--appends", type=click.IntRange(1, 1000), default=40, show_default=True,
              help="Values each of the two proposers appends.")
@click.option("--board", default="icebreaker", show_default=True,
              type=click.Choice(_board_names()), help="Board of the virtual boards.")
@click.option("--learners", type=click.Choice(["sim", "cpu"]), default="sim", show_default=True,
              help="Where each proposer's learner runs.")
@click.option("--kill/--no-kill", default=True, show_default=True,
              help="Take one acceptor away halfway through.")
def demo_paxos_cmd(acceptors, urls, appends, board, learners, kill) -> None:
    """A replicated log on Paxos acceptor boards: two proposers append at once, one board is
    killed halfway, and the log both read back is checked."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .consensus.demo import run_demo
    from .device import check_spec

    for url in urls:
        check_spec(url)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[last]}"), console=console)
    with progress:
        starting = progress.add_task("starting", total=None, last="")
        bars: dict[int, int] = {}

        def on_start(what: str) -> None:
            progress.update(starting, description=f"starting {what}")

        def on_append(proposer: int, instance: int, value: bytes) -> None:
            if not bars:
                progress.remove_task(starting)
                for p in (1, 2):
                    bars[p] = progress.add_task(f"proposer {p}", total=appends, last="")
            progress.update(bars[proposer], advance=1,
                            last=f"instance {instance}: {value.decode(errors='replace')}")

        def on_event(text: str) -> None:
            progress.console.print(f"[bold red]lost[/] {escape(text)}")

        result = run_demo(acceptors=acceptors, urls=urls, appends=appends, board=board,
                          learners=learners, kill=kill, on_start=on_start,
                          on_append=on_append, on_event=on_event)
    table = Table(title=f"the log ({len(result.entries)} instances)")
    for column in ("instance", "value", "proposer", "append #"):
        table.add_column(column, justify="right" if column != "value" else "left")
    shown = result.entries if len(result.entries) <= 24 else \
        result.entries[:12] + [None] + result.entries[-11:]
    for entry in shown:
        if entry is None:
            table.add_row("...", "", "", "")
        else:
            table.add_row(str(entry.instance), escape(entry.value.decode(errors="replace")),
                          str(entry.proposer), str(entry.sequence))
    console.print(table)
    for proposer, counts in result.counts.items():
        console.print(f"proposer {proposer}: " + ", ".join(
            f"{name} {count}" for name, count in sorted(counts.items())))
    lat = sorted(result.latencies)
    if lat:
        console.print(f"append latency (measured here): median {lat[len(lat) // 2] * 1e3:.2f} "
                      f"ms, 95th percentile {lat[int(len(lat) * 0.95)] * 1e3:.2f} ms; "
                      f"{len(lat)} appends in {result.seconds:.2f} s")
    for number, (spec, answered, failed) in enumerate(result.acceptors):
        console.print(f"acceptor {number} ({spec}): answered {answered} calls, {failed} failed")
    for name, passed, detail in result.checks:
        mark = "[green]pass[/]" if passed else "[bold red]FAIL[/]"
        console.print(f"{mark} {name}: {escape(detail)}")
    if not result.ok:
        sys.exit(1)


@main.command("cache")
@click.option("--clear", is_flag=True, help="Delete every cached build (nothing else there).")
def cache_cmd(clear: bool) -> None:
    """Show (or clear) the build cache: Verilator models and bitstreams, keyed by design."""
    import shutil

    from sim.toolchain import CACHE_KINDS, cache_dir

    root = cache_dir()
    table = Table(title=f"build cache: {root}")
    for column, justify in (("kind", "left"), ("builds", "right"), ("MB", "right"),
                            ("holds", "left")):
        table.add_column(column, justify=justify)
    # Only the folders offload's builds make: OFFLOAD_CACHE_DIR may name a folder that holds
    # other things too, which are neither listed nor deleted.
    ours = [root / kind for kind in CACHE_KINDS if (root / kind).is_dir()]
    for folder in ours:
        # Hidden folders are builds under way (or abandoned); they count in the size only.
        builds = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        table.add_row(folder.name, str(len(builds)), f"{size / 1e6:,.1f}",
                      CACHE_KINDS[folder.name])
    console.print(table)
    if clear:
        for folder in ours:
            if folder.is_symlink():
                folder.unlink()
            else:
                shutil.rmtree(folder)
        others = sum(1 for p in root.iterdir() if p.name not in CACHE_KINDS)
        kept = f"; {others} other entries in {root} were left as they were" if others else ""
        console.print(f"cleared; the next build or simulation starts from scratch{kept}")


if __name__ == "__main__":  # pragma: no cover
    main()
