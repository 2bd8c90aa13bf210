"""``offload demo paxos``: a replicated log on acceptor boards, two proposers, one board lost.

:func:`run_demo` starts the acceptors (virtual boards, or the devices it is given), runs two
proposers (two :class:`~offload.consensus.ReplicatedLog` over the same acceptors, each with its
own learner) appending values at once, takes one acceptor away mid-run (a virtual board it
started is killed; a device it was given is disconnected, since a board on another machine is
not its to kill), and checks the log both proposers read back:

* ``agreement``: both proposers read the same entry at every instance;
* ``complete``: the log is every appended value exactly once, without a gap;
* ``appends``: every append is where its call said it was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import OffloadError
from .log import Entry, ReplicatedLog

__all__ = ["run_demo", "DemoResult"]


@dataclass
class DemoResult:
    """What the demo did and found."""

    entries: list[Entry]
    checks: list[tuple[str, bool, str]]
    appended: dict[int, list[tuple[int, bytes]]]  # proposer -> (instance, value) per append
    killed: str | None
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds per append
    counts: dict[int, dict[str, int]] = field(default_factory=dict)  # proposer -> log counts
    #: Per acceptor: (its device, calls it answered, calls that failed), over both proposers.
    acceptors: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)


def _open_acceptors(acceptors: int, urls: Sequence[str], board: str, instances: int | None):
    import offload

    params = {"paxos_acceptor": {"instances": instances}} if instances else None
    if urls:
        return [offload.open(url, fallback="never", params=params) for url in urls]
    devices = []
    try:
        for _ in range(acceptors):
            devices.append(offload.open(f"sim:{board}", fallback="never",
                                        kernels=["paxos_acceptor"], params=params))
    except BaseException:
        for device in devices:
            device.close()
        raise
    return devices


def _open_learner(where: str, board: str, quorum: int, instances: int):
    import offload

    params = {"paxos_learner": {"quorum": quorum, "instances": instances}}
    if where == "cpu":
        return offload.open("cpu", params=params)
    return offload.open(f"sim:{board}", fallback="never", kernels=["paxos_learner"],
                        params=params)


def run_demo(*, acceptors: int = 3, urls: Sequence[str] = (), appends: int = 40,
             board: str = "icebreaker", learners: str = "sim", kill: bool = True,
             instances: int | None = None,
             on_start: Callable[[str], None] | None = None,
             on_append: Callable[[int, int, bytes], None] | None = None,
             on_event: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo (see the module doc): ``appends`` values from each of two proposers.

    ``urls`` are acceptor devices to use instead of starting ``acceptors`` virtual boards of
    ``board``; ``learners`` is ``"sim"`` (a virtual board each) or ``"cpu"``. The callbacks
    report progress: ``on_start(what)`` as each device opens, ``on_append(proposer, instance,
    value)`` after each append, ``on_event(text)`` when a board is taken away.
    """
    if learners not in ("sim", "cpu"):
        raise ValueError(f"learners are 'sim' or 'cpu', not {learners!r}")
    say = on_start or (lambda what: None)
    n = len(urls) or acceptors
    if not 1 <= n <= 8:
        raise OffloadError(f"the demo runs 1 to 8 acceptors, not {n}")
    quorum = n // 2 + 1
    if kill and n - 1 < quorum:
        raise OffloadError(f"{n} acceptors cannot lose one and keep a quorum of {quorum}: run 3 "
                         "or more, or --no-kill")
    say(f"{n} acceptor {'devices' if urls else f'virtual {board} boards'}")
    devices = _open_acceptors(acceptors, urls, board, instances)
    opened = list(devices)
    logs: list[ReplicatedLog] = []
    try:
        table = min(int(d.params("paxos_acceptor")["instances"]) for d in devices)
        if 2 * appends > table:
            raise OffloadError(f"{2 * appends} appends do not fit the acceptors' {table} "
                             "instances: use fewer --appends")
        for proposer in (1, 2):
            say(f"proposer {proposer}'s learner ({'CPU' if learners == 'cpu' else board})")
            learner = _open_learner(learners, board, quorum, table)
            opened.append(learner)
            logs.append(ReplicatedLog(devices, learner, proposer=proposer, fresh=proposer == 1))
        return _run(logs, devices, appends, bool(urls), kill, on_append, on_event)
    finally:
        for log in logs:
            log.close()
        for device in opened:
            device.close()


def _run(logs, devices, appends, given, kill, on_append, on_event) -> DemoResult:
    appended: dict[int, list[tuple[int, bytes]]] = {log.proposer: [] for log in logs}
    latencies: list[float] = []
    failures: list[BaseException] = []
    done = threading.Semaphore(0)
    lock = threading.Lock()

    def propose(log: ReplicatedLog) -> None:
        try:
            for k in range(appends):
                value = f"p{log.proposer} value {k}".encode()
                start = time.perf_counter()
                instance = log.append(value)
                took = time.perf_counter() - start
                with lock:
                    appended[log.proposer].append((instance, value))
                    latencies.append(took)
                if on_append:
                    on_append(log.proposer, instance, value)
                done.release()
        except BaseException as exc:  # reported, and the check fails
            failures.append(exc)
            done.release()

    start = time.perf_counter()
    threads = [threading.Thread(target=propose, args=(log,), daemon=True) for log in logs]
    for thread in threads:
        thread.start()
    killed = None
    if kill:
        for _ in range(appends):  # half of all appends, then one acceptor goes
            done.acquire()
        victim = devices[-1]
        if victim.virtual_board is not None:
            victim.virtual_board.kill()
            killed = f"acceptor {len(devices) - 1} ({victim.spec}): virtual board killed"
        else:
            victim.close()
            killed = (f"acceptor {len(devices) - 1} ({victim.spec}): disconnected (a board "
                      "elsewhere is not the demo's to kill)")
        if on_event:
            on_event(killed)
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if failures:
        raise failures[0]

    entries = logs[0].entries()
    others = logs[1].entries()
    checks = [_agreement(entries, others), _complete(entries, appended),
              _appends(entries, appended)]
    return DemoResult(entries, checks, appended, killed, seconds, latencies,
                      {log.proposer: dict(log.counts) for log in logs},
                      [(d.spec, sum(log.answered[k] for log in logs),
                        sum(log.failed[k] for log in logs)) for k, d in enumerate(devices)])


def _agreement(mine: list[Entry], theirs: list[Entry]) -> tuple[str, bool, str]:
    differ = [k for k, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b]
    ok = not differ and len(mine) == len(theirs)
    detail = (f"both proposers read the same {len(mine)} entries" if ok else
              f"they differ at instances {differ[:5]}; lengths {len(mine)} and {len(theirs)}")
    return "agreement", ok, detail


def _complete(entries: list[Entry], appended) -> tuple[str, bool, str]:
    want = sorted(v for values in appended.values() for _, v in values)
    have = sorted(e.value for e in entries)
    gaps = [k for k, e in enumerate(entries) if e.instance != k]
    ok = want == have and not gaps
    detail = (f"{len(entries)} instances from 0, every appended value once" if ok else
              f"{len(have)} values for {len(want)} appends; gaps at {gaps[:5]}")
    return "complete", ok, detail


def _appends(entries: list[Entry], appended) -> tuple[str, bool, str]:
    wrong = [(i, v) for values in appended.values() for i, v in values
             if i >= len(entries) or entries[i].value != v]
    total = sum(map(len, appended.values()))
    ok = not wrong
    detail = (f"all {total} appends are where append() said" if ok else
              f"{len(wrong)} are not, e.g. {wrong[:3]}")
    return "appends", ok, detail
