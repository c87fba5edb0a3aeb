"""Warm task sandboxes (FORGE_STEP_WARM_SANDBOXES): bubblewrap sandboxes a worker starts before
their tasks arrive. A task gets one with its own checkout and nothing of another task's; the pool
refills; a warm sandbox that died is replaced by one started on demand; a stopped worker leaves
no sandbox, mount or directory behind, and what a killed one leaves is swept.

Real workers with a step work directory of their own, observed from the outside: their
sandboxes through ``/proc`` (the outer ``bwrap`` binds ``<work>/job-*/workspace`` at
``/workspace``), their mounts through ``/proc/self/mountinfo`` (the test shares the workers'
mount namespace). A step prints its mount namespace, which tells which sandbox it ran in.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform
from forge_worker.sandbox import Sandbox, SandboxUnavailable, sweep_stale
from tests.execution.conftest import steps_of
from tests.security.conftest import Cell, fetch_log

T = TypeVar("T")

REPO_TOML = 'forge_version = "1"\n[phases.test]\ngroup = 1\n'
QUOTES = "'" * 3
# Every step prints the mount namespace of its sandbox first.
NAMESPACE = "readlink /proc/self/ns/mnt; "


@dataclass(frozen=True)
class Warm:
    """A task sandbox seen from the host: its outer bwrap, the mount namespace inside, its workspace."""

    pid: int
    namespace: str
    workspace: str


def _bwrap_problem() -> str | None:
    async def probe() -> str | None:
        work = Path(tempfile.mkdtemp(prefix="forge-warm-probe-"))
        try:
            sandbox = await Sandbox.create("auto", work_dir=work)
        except SandboxUnavailable as exc:
            return str(exc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return None if sandbox.kind == "bwrap" else f"warm sandboxes need bubblewrap, this machine has {sandbox.kind}"

    return asyncio.run(probe())


def _steps_dir() -> Path:
    """A step work directory of a worker's own, below a parent the step user may pass."""
    parent = Path(tempfile.mkdtemp(prefix="forge-warm-"))
    os.chmod(parent, 0o711)  # noqa: S103 - the step user passes through to its workspace
    return parent / "steps"


@pytest.fixture(scope="module")
def warm_cell(platform: Platform) -> Iterator[tuple[Cell, Path]]:
    """A pipeline and one worker keeping two warm sandboxes, on a step work directory of its own."""
    problem = _bwrap_problem()
    if problem is not None:
        pytest.skip(f"no bubblewrap sandbox on this machine: {problem}")
    work = _steps_dir()
    cell = Cell(platform, "warm")
    cell.env["FORGE_REPOSITORIES"] = f"exec-{cell.tag}/*"
    try:
        cell.start_pipeline()
        cell.start_worker({"FORGE_STEP_WORK_DIR": str(work), "FORGE_STEP_WARM_SANDBOXES": "2"})
        cell.wait_workers(1)
        yield cell, work
    finally:
        cell.close()
        sweep_stale(work)
        shutil.rmtree(work.parent, ignore_errors=True)


# What the host sees


def _sandboxes(work: Path) -> list[Warm]:
    """The task sandboxes of the worker on ``work`` whose runner (``bash``) is up."""
    marker = f"{work}/job-".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) != b"bwrap" or not any(a.startswith(marker) for a in argv):
            continue
        workspace = next(argv[i + 1] for i, a in enumerate(argv) if a == b"--bind" and argv[i + 2] == b"/workspace")
        namespace = _runner_namespace(int(entry.name))
        if namespace is not None and _alive(int(entry.name)):
            found.append(Warm(int(entry.name), namespace, os.fsdecode(workspace)))
    return found


def _runner_namespace(pid: int) -> str | None:
    """The mount namespace of ``pid``'s child once that child is the runner (bwrap execs it)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = fh.read().split()
        for child in children:
            with open(f"/proc/{child}/comm") as fh:
                if fh.read().strip() == "bash":
                    return os.readlink(f"/proc/{child}/ns/mnt")
    except OSError:
        return None
    return None


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie, killed and not reaped yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except OSError:
        return False


def _mounts(work: Path) -> list[str]:
    """Mount points at or below ``work`` (mountinfo's fifth field; no spaces in these paths)."""
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == str(work) or p.startswith(f"{work}/")]


async def _until(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """``check()``'s first true result; polled, as the state lives in another process."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)
    return result


def _count(work: Path, count: int, besides: Sequence[Warm] = ()) -> Callable[[], list[Warm] | None]:
    """A check for ``count`` live sandboxes on ``work``, none of them one of ``besides``."""
    old = {w.pid for w in besides}

    def check() -> list[Warm] | None:
        found = _sandboxes(work)
        return found if len(found) == count and not old & {w.pid for w in found} else None

    return check


# Runs


def _project(name: str, run: str) -> str:
    return f'name = "{name}"\n[[phases.test.steps]]\nname = "{name}"\nrun = {QUOTES}{run}{QUOTES}\n'


async def _run(cell: Cell, client: httpx.AsyncClient, projects: dict[str, str]) -> dict[str, str]:
    """Run ``projects`` (name -> command; its README says its name): each one's log, once all succeeded."""
    repo = cell.repo()
    files: dict[str, str | None] = {".forge/repo.toml": REPO_TOML}
    files.update({f"{name}/.forge/project.toml": _project(name, run) for name, run in projects.items()})
    files.update({f"{name}/README": f"readme of {name}\n" for name in projects})
    run = await cell.wait_run(client, await cell.create_run(client, repo, repo.commit(files)), timeout=90)
    steps: dict[str, dict[str, Any]] = {key[1]: step for key, step in steps_of(run).items()}
    logs = {name: await fetch_log(client, step) for name, step in steps.items()}
    assert run["status"] == "success", (run, logs)
    return logs


async def test_tasks_get_warm_sandboxes_with_their_own_checkout_and_the_pool_refills(
    warm_cell: tuple[Cell, Path], client: httpx.AsyncClient
) -> None:
    cell, work = warm_cell
    warm = await _until(_count(work, 2), "two warm sandboxes")
    barrier = cell.shared_dir(f"warm-{uuid.uuid4().hex[:8]}")
    logs = await _run(
        cell,
        client,
        {
            "writer": NAMESPACE + f"cat README; echo secret-of-writer > ../writer-file; echo mine > mine.txt;"
            f" touch {barrier}/written",
            "reader": NAMESPACE + f"cat README; for i in $(seq 500); do [ -e {barrier}/written ] && break; sleep 0.02;"
            " done; ls -a /workspace; cat ../writer-file ../writer/mine.txt || echo nothing there",
        },
    )

    # Each task ran in a warm sandbox of its own, seeing its checkout and nothing the other wrote.
    namespaces = {name: text.splitlines()[0] for name, text in logs.items()}
    assert sorted(namespaces.values()) == sorted(w.namespace for w in warm), (namespaces, warm)
    assert "readme of writer" in logs["writer"]
    assert "readme of reader" in logs["reader"]
    assert "secret-of-writer" not in logs["reader"]
    assert "mine\n" not in logs["reader"]
    assert ".git" not in logs["reader"]

    # The pool refilled with new sandboxes; the tasks' workspaces and mounts are gone.
    refilled = await _until(_count(work, 2, besides=warm), "two new warm sandboxes")
    held = {w.workspace for w in refilled}
    await _until(lambda: set(_mounts(work)) <= held, f"only the warm workspaces mounted: {_mounts(work)}")
    if os.geteuid() == 0:  # an overlay workspace: each warm one is a bind mount of itself
        assert sorted(_mounts(work)) == sorted(held)


async def test_a_warm_sandbox_that_died_is_discarded_and_the_task_starts_one(
    warm_cell: tuple[Cell, Path], client: httpx.AsyncClient
) -> None:
    cell, work = warm_cell
    worker_log = cell.workers[0].log_path
    assert worker_log is not None

    def discarded() -> int:
        return worker_log.read_text(errors="replace").count("sandbox.warm_sandbox_gone")

    before = discarded()
    killed = await _until(_count(work, 2), "two warm sandboxes")
    for sandbox in killed:
        os.killpg(sandbox.pid, signal.SIGKILL)  # bwrap and everything in the sandbox
    await _until(lambda: not any(os.path.exists(f"/proc/{w.pid}") for w in killed), "the worker reaped them")

    # (Not compared by mount namespace: the kernel reuses a freed namespace's number.)
    logs = await _run(cell, client, {"app": "cat README; echo out > out.txt; cat out.txt"})
    assert "readme of app" in logs["app"]
    assert "out\n" in logs["app"]
    await _until(lambda: discarded() - before == 2, "both dead sandboxes discarded, as the worker logs")
    await _until(_count(work, 2, besides=killed), "the pool refilled")


async def test_a_task_without_network_leaves_the_warm_sandboxes_alone(
    warm_cell: tuple[Cell, Path], client: httpx.AsyncClient
) -> None:
    """Warm sandboxes have the network on: a task whose steps all run without it starts its
    own and leaves the warm ones for the tasks that can use them."""
    cell, work = warm_cell
    warm = await _until(_count(work, 2), "two warm sandboxes")
    repo = cell.repo()
    project = (
        'name = "offline"\n[[phases.test.steps]]\nname = "offline"\nnetwork = false\n'
        f"run = {QUOTES}{NAMESPACE}cat README; cat /sys/class/net/*/operstate | sort | uniq -c{QUOTES}\n"
    )
    files: dict[str, str | None] = {
        ".forge/repo.toml": REPO_TOML,
        "offline/.forge/project.toml": project,
        "offline/README": "readme of offline\n",
    }
    run = await cell.wait_run(client, await cell.create_run(client, repo, repo.commit(files)), timeout=90)
    (step,) = steps_of(run).values()
    log = await fetch_log(client, step)
    assert run["status"] == "success", (run, log)
    assert "readme of offline" in log
    assert log.splitlines()[0] not in {w.namespace for w in warm}
    # Once its own sandbox is gone, the same two warm ones are still waiting.
    left = await _until(_count(work, 2), "the task's own sandbox gone")
    assert sorted(w.pid for w in left) == sorted(w.pid for w in warm)


async def _idle_worker(cell: Cell, work: Path, warm: int) -> tuple[Process, list[Warm]]:
    """A worker of its own that pulls release jobs only (it takes none of the cell's tasks),
    once its ``warm`` sandboxes are up in ``work``: the worker and those sandboxes."""
    worker = cell.start_worker(
        {"FORGE_STEP_WORK_DIR": str(work), "FORGE_STEP_WARM_SANDBOXES": str(warm), "FORGE_WORKER_TYPES": "release"}
    )
    return worker, await _until(_count(work, warm), f"{warm} warm sandboxes")


async def test_a_stopped_worker_leaves_no_sandbox_mount_or_directory(warm_cell: tuple[Cell, Path]) -> None:
    cell, _ = warm_cell
    work = _steps_dir()
    try:
        worker, warm = await _idle_worker(cell, work, 3)
        if os.geteuid() == 0:
            assert sorted(_mounts(work)) == sorted(w.workspace for w in warm)
        worker.stop(timeout=20)
        assert worker.popen.returncode == 0
        assert not [w for w in warm if _alive(w.pid)]
        assert _mounts(work) == []
        assert list(work.iterdir()) == []  # no job directory, no lock file
    finally:
        sweep_stale(work)
        shutil.rmtree(work.parent, ignore_errors=True)


async def test_what_a_killed_worker_left_warm_is_swept(warm_cell: tuple[Cell, Path]) -> None:
    """SIGKILL: the sandboxes die with their worker (bwrap --die-with-parent), its directories
    and the warm workspaces' mounts stay until a sweep (a worker's, at start and periodically)."""
    cell, _ = warm_cell
    work = _steps_dir()
    try:
        worker, warm = await _idle_worker(cell, work, 2)
        worker.kill()
        await _until(lambda: not [w for w in warm if _alive(w.pid)], "the sandboxes died with their worker")
        assert len([p for p in work.iterdir() if p.is_dir()]) == 2
        assert sweep_stale(work) == 2
        assert _mounts(work) == []
        assert list(work.iterdir()) == []
    finally:
        sweep_stale(work)
        shutil.rmtree(work.parent, ignore_errors=True)
