"""``forge runs watch``, ``wait`` and ``logs -f`` in a pseudo-terminal against the real platform."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt

from .conftest import Lane, project_files

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A ``forge`` process whose stdin/stdout/stderr are a pseudo-terminal, as at a shell."""

    def __init__(self, lane: Lane, *args: str) -> None:
        master, slave = pty.openpty()
        cmd = [
            sys.executable,
            "-m",
            "forge_cli",
            "--api",
            lane.gateway_url,
            "--token",
            lane.platform.token("t@acme.io"),
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TERM": "xterm-256color",
            "COLUMNS": "160",
            "LINES": "50",
        }
        self.proc = subprocess.Popen([*cmd, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.output = ""

    def read_until(self, done: Callable[[str], bool], timeout: float = 90.0) -> str:
        """Output so far once ``done(output)`` holds (or the process has ended and said it all)."""
        deadline = time.monotonic() + timeout
        while not done(self.plain):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the terminal never showed what was expected:\n{self.plain[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the process has closed the terminal
                data = b""
            if not data:
                break
            self.output += data.decode("utf-8", "replace")
        return self.plain

    @property
    def plain(self) -> str:
        """What the terminal printed, without colours and cursor movements."""
        return _ESCAPES.sub("", self.output).replace("\r", "")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@contextmanager
def terminal(lane: Lane, *args: str) -> Iterator[Terminal]:
    term = Terminal(lane, *args)
    try:
        yield term
    finally:
        term.close()


def _create_run(lane: Lane, steps: dict[str, str]) -> str:
    repository, sha = lane.push(project_files(steps))
    resp = httpx.post(
        f"{lane.gateway_url}/v1/runs",
        json={"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
        headers=lane.headers(),
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _drain(term: Terminal) -> str:
    """Everything the process writes until it closes the terminal."""
    return term.read_until(lambda _: False)


def test_watch_draws_the_tree_live_and_exits_with_the_outcome(lane: Lane) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    run_id = _create_run(lane, {"compile": f"echo hi; {lane.wait_for(gate)}", "check": "true"})
    with terminal(lane, "runs", "watch", run_id) as term:
        term.read_until(lambda out: "compile running" in out)
        lane.signal(gate)
        out = _drain(term)
        code = term.proc.wait(30)
    assert code == 0, out
    assert "check success" in out
    assert "compile success" in out
    assert f"run {run_id}" in out
    assert "phase test success" in out


def test_wait_exit_status_by_outcome(lane: Lane) -> None:
    ok = _create_run(lane, {"fine": "true"})
    bad = _create_run(lane, {"broken": "exit 3"})
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    stuck = _create_run(lane, {"stuck": lane.wait_for(gate)})
    for run_id, expected in ((ok, 0), (bad, 1)):
        with terminal(lane, "runs", "wait", run_id) as term:
            out = _drain(term)
            assert term.proc.wait(30) == expected, out
    # Still running when --timeout passes: 3.
    with terminal(lane, "runs", "wait", stuck, "--timeout", "2") as term:
        out = _drain(term)
        assert term.proc.wait(30) == 3, out
        assert "did not finish in time" in out
    # Cancelled while waited for: 2.
    with terminal(lane, "runs", "wait", stuck) as term:
        resp = httpx.delete(f"{lane.gateway_url}/v1/runs/{stuck}", headers=lane.headers(), timeout=30)
        assert resp.status_code == 204, resp.text
        out = _drain(term)
        assert term.proc.wait(30) == 2, out
    lane.signal(gate)


def test_logs_follow_prints_while_the_step_runs(lane: Lane) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    run_id = _create_run(lane, {"build": f"echo compiling; {lane.wait_for(gate)}; echo linked", "after": "echo bye"})
    with terminal(lane, "runs", "logs", run_id, "-f") as term:
        term.read_until(lambda out: "compiling" in out)
        assert "linked" not in term.plain
        lane.signal(gate)
        out = _drain(term)
        assert term.proc.wait(30) == 0, out
    assert out.index("==> test/api/build <==") < out.index("compiling") < out.index("linked")
    assert out.index("linked") < out.index("==> test/api/after <==") < out.index("bye")
    # Without -f, a finished run's logs through the API; --step picks one.
    with terminal(lane, "runs", "logs", run_id, "--step", "after") as term:
        out = _drain(term)
        assert term.proc.wait(30) == 0, out
    assert "bye" in out
    assert "compiling" not in out


# --- streams end when their token expires (the gateway ends them at exp) ---------------------------


def _until_step(lane: Lane, run_id: str, status: str) -> None:
    """Until the run's one step has ``status`` (asked with a token of the test's own)."""
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=lane.gateway_url, headers=lane.headers("viewer"), timeout=10) as client:
        while time.monotonic() < deadline:
            run = client.get(f"/v1/runs/{run_id}").raise_for_status().json()
            steps = [s["status"] for p in run["phases"] for t in p["tasks"] for s in t["steps"]]
            if steps == [status]:
                return
            time.sleep(0.1)
    raise AssertionError(f"the step of run {run_id} never became {status}")


def _forge(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "forge_cli", *args]
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or base)


def test_a_token_that_expires_while_following_ends_watch_and_logs_with_log_in_again(lane: Lane) -> None:
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    run_id = _create_run(lane, {"build": f"echo hi; {lane.wait_for(gate)}"})
    _until_step(lane, run_id, "running")
    token = lane.platform.token("short.cli@acme.io", expires_in=3)
    exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    common = ("--api", lane.gateway_url, "--token", token, "runs")
    try:
        watch = _forge(*common, "watch", run_id)
        logs = _forge(*common, "logs", run_id, "-f")
        watched, followed = watch.communicate(timeout=60), logs.communicate(timeout=60)
        ended = time.time()
    finally:
        lane.signal(gate)
    # both stopped once the gateway had ended their streams and refused the token: no loop, a
    # clear line, exit 4 (the session cannot go on)
    assert ended < exp + 10, f"still following {ended - exp:.1f} s after the token expired"
    for name, proc, (out, err) in (("watch", watch, watched), ("logs", logs, followed)):
        assert proc.returncode == 4, (name, out, err)
        line = err.strip()
        assert "\n" not in line, err
        assert line.startswith("forge: the gateway no longer accepts the token, so the stream cannot go on (401 "), err
        assert "token has expired" in line
        assert line.endswith("pass a fresh token (--token or FORGE_TOKEN)"), err
    assert f"run {run_id} running" in watched[0]
    assert followed[0] == "==> test/api/build <==\nhi\n"


def test_a_session_refreshes_when_the_stream_ends_and_watch_and_logs_go_on(lane: Lane, tmp_path: Path) -> None:
    from tests.cli.test_login import Forge

    user = Forge(tmp_path, lane.gateway_url)
    login, _ = user.login("refresh.cli@acme.io", ["viewer"])
    assert login.code == 0, login
    name = login.json["name"]
    gate = f"gate-{uuid.uuid4().hex[:6]}"
    run_id = _create_run(lane, {"build": f"echo hi; {lane.wait_for(gate)}; echo bye"})
    _until_step(lane, run_id, "running")

    # the session's access token expires in 2-3 s; the CLI takes it as good until then (it
    # refreshes 30 s ahead of expires_at)
    short = lane.platform.token("refresh.cli@acme.io", "viewer", expires_in=3)
    config = user.config()
    config["contexts"][name]["access_token"] = short
    config["contexts"][name]["expires_at"] = float(jwt.decode(short, options={"verify_signature": False})["exp"]) + 30
    user.write_config(config)

    watch = _forge("--api", lane.gateway_url, "runs", "watch", run_id, env=user.env)
    logs = _forge("--api", lane.gateway_url, "runs", "logs", run_id, "-f", env=user.env)
    try:
        # the streams end at exp; reconnecting, the CLI refreshes the session (once, for both)
        deadline = time.monotonic() + 30
        while user.config()["contexts"][name]["access_token"] == short:
            assert time.monotonic() < deadline, "the session was never refreshed"
            assert watch.poll() is None, watch.communicate()
            assert logs.poll() is None, logs.communicate()
            time.sleep(0.1)
    finally:
        lane.signal(gate)
    watched, followed = watch.communicate(timeout=60), logs.communicate(timeout=60)
    assert watch.returncode == 0, watched
    assert logs.returncode == 0, followed
    assert "build success" in watched[0]
    # the log, resumed by Range after its stream ended: whole, nothing twice
    assert followed[0] == "==> test/api/build <==\nhi\nbye\n"
