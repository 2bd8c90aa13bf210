"""Long single-threaded work a test module will need (a SymbiYosys check, a Yosys and nextpnr
build), started ahead in subprocesses two at a time, so that the CI machine's second core runs
one while a test waits on another.

Only a cache warmer: a job runs a snippet of Python that fills the shared build cache
(``$OFFLOAD_CACHE_DIR``), and the test then does its work as before and takes the result from
the cache. A job that failed leaves nothing there, so the test runs the work itself and fails
with its own error. Start only the jobs of the tests selected (see :func:`selected`), and wait
for a job before the test's own call, or the two would do the same work side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The CI machine's cores; the tools each job runs are single-threaded.
WORKERS = 2


class Jobs:
    """``jobs`` (key to Python source) run in that order, :data:`WORKERS` at a time, each in a
    ``python -c`` of its own started in the project's root with this process's environment."""

    def __init__(self, jobs: dict[str, str], workers: int = WORKERS):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="background")
        self._futures: dict[str, Future] = {
            key: self._pool.submit(_run, source) for key, source in jobs.items()}

    def wait(self, key: str) -> None:
        """Wait for job ``key`` (if there is one) to end, however it ended."""
        future = self._futures.get(key)
        if future is not None and not future.cancelled():
            future.result()

    def close(self) -> None:
        """Drop the jobs not yet started (a test that would have waited for them did not run)
        and wait for those running, so that none outlives the module's tests."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _run(source: str) -> int:
    done = subprocess.run([sys.executable, "-c", source], cwd=ROOT, env=dict(os.environ),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return done.returncode


def selected(request: pytest.FixtureRequest) -> list[pytest.Item]:
    """The session's tests of the requesting test's module that will run (after ``-k`` and
    deselection), in order."""
    module = request.node.module
    return [item for item in request.session.items
            if getattr(item, "module", None) is module]
