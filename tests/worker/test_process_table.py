"""The worker's record of running step process groups: a worker killed with SIGKILL leaves its
steps' groups in its journal, and the next worker sharing the state directory kills them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from forge_worker.steps import ProcessTable

# A "worker" that starts two steps (each its own process group), finishes one, then is killed.
CHILD = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    from pathlib import Path
    from forge_worker.steps import ProcessTable

    table = ProcessTable(Path(sys.argv[1]))
    done = subprocess.Popen(["sleep", "600"], start_new_session=True)
    left = subprocess.Popen(["sleep", "600"], start_new_session=True)
    table.add("run-a", done.pid, asyncio.Event())
    table.add("run-b", left.pid, asyncio.Event())
    done.kill()
    done.wait()
    table.remove("run-a", done.pid)
    print(left.pid, flush=True)
    sys.stdin.read()
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def test_groups_of_a_killed_worker_are_reaped(tmp_path: Path) -> None:
    state = tmp_path / "running"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    left = int(child.stdout.readline())
    try:
        assert _alive(left)
        # A live owner's groups are left alone.
        assert ProcessTable(state).reap_orphans() == 0
        assert _alive(left)
        child.kill()
        child.wait()
        assert _alive(left), "SIGKILL of the worker does not stop its step"
        assert ProcessTable(state).reap_orphans() == 1
        deadline = time.monotonic() + 5
        while _alive(left) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(left)
        assert list(state.iterdir()) == []
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
        if _alive(left):
            os.killpg(left, signal.SIGKILL)


def test_journal_is_emptied_when_no_step_runs(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    table.add("r", 999_999, asyncio.Event())
    table.add("r", 999_998, asyncio.Event())
    table.remove("r", 999_999)
    journal = tmp_path / f"{os.getpid()}.log"
    assert journal.read_text() == "+999999 r\n+999998 r\n-999999\n"
    table.remove("r", 999_998)
    assert journal.read_text() == ""
    assert table.by_run == {}
