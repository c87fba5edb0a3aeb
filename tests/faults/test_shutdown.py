"""Every process stops cleanly and promptly when told to (SIGTERM, as Kubernetes does on a
rolling update or a scale-down): it finishes its shutdown (connections drained, background loops
stopped) well inside the pod's grace period, rather than being killed at its end.

Each service is started as an extra replica of the session's platform (its settings, database
and NATS), so it runs its background loops (the pipeline's dispatcher and webhook fan-out
included) as in production; the test waits for its exit, not for a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from forge_dev.testing import Platform

# Uvicorn's graceful period; Kubernetes sends SIGKILL 30 s after SIGTERM by default.
PROMPT = 10.0


@pytest.mark.parametrize("service", ["pipeline", "release", "deployment", "approval", "gateway", "worker"])
def test_a_service_told_to_stop_exits_cleanly_within_its_grace_period(platform: Platform, service: str) -> None:
    # Workers share one log file (and have no health endpoint): their lines are counted.
    started, stopped = ("worker.started", "worker.stopped") if service == "worker" else (None, "service.stopped")
    shared = platform.stack.infra.config.data_dir / "logs" / "worker.log"
    log_before = _log(shared) if service == "worker" else ""
    proc = platform.start_process(service)
    try:
        if started is not None:
            _await_line(proc.log_path, started, log_before.count(f'"message": "{started}"') + 1)
        os.killpg(proc.popen.pid, signal.SIGTERM)
        try:
            code = proc.popen.wait(PROMPT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{service} was still running {PROMPT:.0f}s after SIGTERM:\n{_tail(proc.log_path)}")
        # Uvicorn re-raises the signal it handled once its shutdown is done (exit status -15);
        # the worker handles it itself (0). Either way the last word is the shutdown's end.
        assert code in (0, -signal.SIGTERM), f"{service} exited with {code} after SIGTERM:\n{_tail(proc.log_path)}"
        said = _log(proc.log_path).count(f'"message": "{stopped}"') - log_before.count(f'"message": "{stopped}"')
        assert said == 1, f"{service} did not finish its shutdown:\n{_tail(proc.log_path)}"
    finally:
        proc.kill()


def _log(path: Path | None) -> str:
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def _await_line(path: Path | None, message: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while _log(path).count(f'"message": "{message}"') < count:
        assert time.monotonic() < deadline, f"no {message} in {path}"
        time.sleep(0.05)


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
