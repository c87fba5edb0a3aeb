"""`make run`'s supervisor: a Forge process that dies is started again with back-off (as
Kubernetes restarts a pod) instead of the whole platform stopping. Real processes; the
supervisor's clock is the test's, so back-off is checked without waiting for it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from forge_dev.stack import Infra, StackConfig, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_crashing_process_is_restarted_with_growing_back_off(tmp_path: Path) -> None:
    infra = Infra(StackConfig(data_dir=tmp_path, log_to_files=True))
    starts = tmp_path / "starts"
    crash = f"open({str(starts)!r}, 'a').write('started\\n'); raise SystemExit(3)"
    stable = infra._spawn("pipeline", [sys.executable, "-c", "import time; time.sleep(600)"])
    crashing = infra._spawn("worker", [sys.executable, "-c", crash], env={"FORGE_X": "1"})
    lines: list[str] = []
    clock = Clock()
    supervisor = Supervisor(infra, lines.append, base=1.0, cap=4.0, stable=60.0, clock=clock)
    try:
        delays = []
        for _ in range(4):
            deadline = time.monotonic() + 10
            while crashing.popen.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert supervisor.check() == []  # death noticed, restart scheduled
            delays.append(float(lines[-1].rsplit(" in ", 1)[1].rstrip("s")))
            clock.now += delays[-1]
            assert supervisor.check() == ["worker"]
        assert delays == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
        assert crashing.restarts == 4
        assert starts.read_text().count("started") >= 4
        assert stable.popen.poll() is None
        assert stable.restarts == 0
        assert any("worker exited with code 3" in line for line in lines)
        assert crashing.log_path is not None
        assert crashing.log_path.exists()
    finally:
        infra.stop()
