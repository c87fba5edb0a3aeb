"""Hostile steps (issue 12): each tries to break out of its sandbox in one way, in runs with a
normal step beside them. Every attempt fails, the run says so clearly, and the normal step and
the workers are unaffected."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from forge_worker.sandbox import ENVIRONMENT_ALLOW_LIST
from tests.execution.conftest import pids_running, steps_of
from tests.security.conftest import Cell, fetch_log

REPO_TOML = 'forge_version = "1"\n[phases.test]\ngroup = 1\n'
NORMAL = "echo built; test -f README && touch out && ls out"
QUOTES = "'" * 3  # a TOML literal multi-line string: the command as written, backslashes included


def _step(name: str, run: str, **limits: str) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in limits.items())
    return f'[[phases.test.steps]]\nname = "{name}"\nrun = {QUOTES}{run}{QUOTES}\n{extra}'


def _project(name: str, run: str, normal_first: bool = False, **limits: str) -> str:
    """One task: the step ``name`` running ``run``, after a normal step when ``normal_first``."""
    before = _step("normal", NORMAL) if normal_first else ""
    return f'name = "{name}"\n{before}{_step(name, run, **limits)}'


def _secrets(cell: Cell) -> dict[str, str]:
    """Values a step must never see: the worker's credentials and the platform's connection URLs."""
    env = {**cell.platform.env(), **cell.env}
    secrets = {
        "FORGE_WORKER_CLIENT_SECRET": "forge-worker-secret",
        "FORGE_S3_SECRET_KEY": "forge-secret",
        "FORGE_DATABASE_URL": env["FORGE_DATABASE_URL"],
        "FORGE_GITHUB_WEBHOOK_SECRET": env.get("FORGE_GITHUB_WEBHOOK_SECRET", ""),
    }
    return {k: v for k, v in secrets.items() if v}


async def _run(cell: Cell, client: httpx.AsyncClient, projects: dict[str, str]) -> dict[str, Any]:
    repo = cell.repo()
    files = {".forge/repo.toml": REPO_TOML}
    files.update({f"{name}/.forge/project.toml": text for name, text in projects.items()})
    files.update({f"{name}/README": name for name in projects})
    sha = repo.commit(files)
    run_id = await cell.create_run(client, repo, sha)
    run = await cell.wait_run(client, run_id, timeout=90)
    assert run["phases"], f"the run has no plan: {run['error']}"
    return run


async def test_probes_find_nothing_of_the_worker_and_a_normal_step_beside_them_succeeds(
    security_cell: Cell, client: httpx.AsyncClient
) -> None:
    cell = security_cell
    data_dir = cell.platform.data_dir
    projects = {
        "normal": _project("normal", NORMAL),
        # Every process's environment, the parent's first (the worker, were there no sandbox).
        "environ": _project(
            "environ",
            "tr '\\0' '\\n' < /proc/$PPID/environ; for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ; done;"
            " echo ---env---; env; echo ---end---",
        ),
        # Processes it can see, then an attempt to kill every one of them (the worker included).
        "pids": _project(
            "pids", "echo pids: $(ls -d /proc/[0-9]* | wc -l); ps -e -o pid=,comm=; kill -9 -1 || echo kill refused"
        ),
        # The git cache and the data directory: plant a hook, write a file, find other workspaces.
        "cache": _project(
            "cache",
            f"for d in {cell.cache} {data_dir}; do ls $d && echo FOUND $d; touch $d/planted && echo WROTE $d; done;"
            f" echo x > {cell.cache}/mirrors/hook && echo WROTE-HOOK;"
            " ls /tmp/forge-steps-* && echo FOUND-WORKSPACES; true",
        ),
    }
    run = await _run(cell, client, projects)
    steps = {key[1]: step for key, step in steps_of(run).items()}
    logs = {name: await fetch_log(client, step) for name, step in steps.items() if step.get("logs_url")}
    assert set(logs) == set(projects), {n: (s["status"], s.get("exit_code")) for n, s in steps.items()}
    assert steps["normal"]["status"] == "success", logs["normal"]
    assert "built" in logs["normal"]

    # No secret of the worker in any log, from any process it could read.
    for name, text in logs.items():
        for setting, value in _secrets(cell).items():
            assert value not in text, f"step {name} read {setting}"
    env_lines = logs["environ"].split("---env---\n", 1)[1].split("---end---", 1)[0].splitlines()
    names = {line.split("=", 1)[0] for line in env_lines if "=" in line}
    assert names - {*ENVIRONMENT_ALLOW_LIST, "PWD", "SHLVL", "_", "OLDPWD"} == set(), names

    # Its own PID namespace: a handful of processes, and kill -9 -1 reached none of the workers.
    count = int(logs["pids"].split("pids: ", 1)[1].split()[0])
    assert count < 10, logs["pids"]
    assert all(w.popen.poll() is None for w in cell.workers), "a step killed a worker"

    # Neither the git cache nor the data directory exists in the sandbox; nothing was written.
    assert "FOUND" not in logs["cache"], logs["cache"]
    assert "WROTE" not in logs["cache"], logs["cache"]
    assert not (cell.cache / "planted").exists()
    assert not (data_dir / "planted").exists()
    assert not (cell.cache / "mirrors" / "hook").exists()
    assert run["status"] == "success"


async def test_limits_kill_the_whole_step_and_the_log_names_the_limit(
    scoped_cell: Cell, client: httpx.AsyncClient
) -> None:
    """Each limit in a run of its own (a failed task skips the tasks not started yet), each run
    with a normal step first in the same task (in the same task sandbox, with the default scope)."""
    cell = scoped_cell
    marker = f"600.{uuid.uuid4().int % 10**9:09d}"
    allocate = "python3 -c \"import time; x = b'a' * (400 << 20); time.sleep(30)\""
    connect = "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)\""
    hostile: dict[str, tuple[str, dict[str, str]]] = {
        "memory": (allocate, {"memory": '"64MiB"'}),
        "forkbomb": ("f() { f | f & }; f; sleep 30", {"processes": "32"}),
        "offline": (connect, {"network": "false"}),
        "timeout": (f"(setsid sleep {marker} &); sleep {marker}", {"timeout": '"2s"'}),
    }
    runs = await asyncio.gather(
        *(
            _run(cell, client, {name: _project(name, command, normal_first=True, **limits)})
            for name, (command, limits) in hostile.items()
        )
    )
    last_lines: dict[str, str] = {}
    for name, run in zip(hostile, runs, strict=True):
        steps = {key[2]: step for key, step in steps_of(run).items()}
        assert steps["normal"]["status"] == "success", (name, run)
        assert steps[name]["status"] == "failed", (name, run)
        assert run["status"] == "failed"
        last_lines[name] = (await fetch_log(client, steps[name])).strip().splitlines()[-1]

    assert "memory limit of 64 MiB exceeded" in last_lines["memory"]
    assert "process limit of 32 reached" in last_lines["forkbomb"]
    assert "Network is unreachable" in last_lines["offline"], last_lines["offline"]
    assert "timed out after 2s (its timeout limit)" in last_lines["timeout"]
    # The whole tree went, the process that left its session included.
    deadline = time.monotonic() + 5
    while pids_running(marker) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert pids_running(marker) == []
    assert all(w.popen.poll() is None for w in cell.workers)


async def test_the_run_error_names_the_limit(security_cell: Cell, client: httpx.AsyncClient) -> None:
    allocate = "python3 -c \"import time; x = b'a' * (400 << 20); time.sleep(30)\""
    run = await _run(security_cell, client, {"big": _project("big", allocate, memory='"48MiB"')})
    assert run["status"] == "failed"
    assert "used more than its memory limit of 48 MiB" in run["error"], run["error"]


async def test_a_step_cannot_read_another_tasks_workspace(scoped_cell: Cell, client: httpx.AsyncClient) -> None:
    """Two tasks of one commit: each has its own view of the checkout; what one writes (new
    files, or changes to the checkout's own) the other never sees."""
    run = await _run(
        scoped_cell,
        client,
        {
            "writer": _project(
                "writer",
                "echo secret-of-writer > ../writer-file; echo mine > mine.txt; echo tampered >> ../reader/README;"
                " mv ../reader ../moved; sleep 1",
            ),
            "reader": _project(
                "reader",
                "sleep 0.5; ls -la /workspace; cat README; cat ../writer-file ../writer/mine.txt || echo nothing there",
            ),
        },
    )
    steps = {key[1]: step for key, step in steps_of(run).items()}
    assert steps["writer"]["status"] == "success"
    assert steps["reader"]["status"] == "success"
    log = await fetch_log(client, steps["reader"])
    assert "secret-of-writer" not in log
    assert "mine\n" not in log
    assert "tampered" not in log
    assert ".git" not in log  # the checkout's .git file (pointing into the git cache) is not there


async def test_a_step_gets_its_own_env_and_cannot_override_the_platforms(
    security_cell: Cell, client: httpx.AsyncClient
) -> None:
    """``env`` in project.toml reaches the step's processes; a platform name is refused at
    discovery, the run's error naming the file and the field."""
    cell = security_cell
    greet = _project("greet", 'echo "greeting: $GREETING"', env='{ GREETING = "hello" }')
    run = await _run(cell, client, {"greet": greet})
    steps = {key[1]: step for key, step in steps_of(run).items()}
    assert run["status"] == "success", run
    assert "greeting: hello" in await fetch_log(client, steps["greet"])

    repo = cell.repo()
    forged = _project("forged", "env", env='{ FORGE_RUN_ID = "someone-else" }')
    sha = repo.commit({".forge/repo.toml": REPO_TOML, "forged/.forge/project.toml": forged, "forged/README": "forged"})
    failed = await cell.wait_run(client, await cell.create_run(client, repo, sha), timeout=90)
    assert failed["status"] == "failed"
    assert "forged/.forge/project.toml: phases.test.steps[0].env.FORGE_RUN_ID: is set by the platform" in (
        failed["error"] or ""
    ), failed["error"]
    assert failed["phases"] == []


async def test_a_tasks_steps_share_its_sandbox_but_nothing_a_step_left_running(
    scoped_cell: Cell, client: httpx.AsyncClient
) -> None:
    """With one sandbox per task, a step sees the /tmp its task's previous step wrote (never
    another task's); with either scope, what a step leaves running (even in a session of its
    own) is gone before the next step starts."""
    cell = scoped_cell
    marker = f"700.{uuid.uuid4().int % 10**9:09d}"
    writer = (
        _step("write", "echo from-first-step > /tmp/note")
        + _step("look", "cat /tmp/note 2>/dev/null || echo no-note; (setsid sleep " + marker + " &); echo left-running")
        + _step("after", "ps -eo args | grep -c '^sleep " + marker + "' || true")
    )
    run = await _run(
        cell,
        client,
        {
            "writer": f'name = "writer"\n{writer}',
            "other": _project("other", "sleep 0.5; cat /tmp/note || echo no-note-here"),
        },
    )
    assert run["status"] == "success", run
    steps = {key[1:]: step for key, step in steps_of(run).items()}
    look = await fetch_log(client, steps[("writer", "look")])
    expected = "from-first-step" if cell.env.get("FORGE_STEP_SANDBOX_SCOPE", "task") == "task" else "no-note"
    assert expected in look.splitlines()[0], look
    assert (await fetch_log(client, steps[("writer", "after")])).strip() == "0"
    assert "no-note-here" in await fetch_log(client, steps[("other", "other")])
    assert pids_running(marker) == []
