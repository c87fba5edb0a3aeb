"""Orchestration overhead: 100 no-op steps (``true``) across 5 phases x 20 projects, from
``POST /v1/runs`` to ``success``, with 1 and with 4 workers.

    .venv/bin/python -m bench.pipeline_exec [--runs 5] [--workers 1,4] [--sandbox auto,none]

With ``--sandbox`` the whole bench runs once per FORGE_STEP_SANDBOX value, side by side, after
a direct measurement of one step's spawn-to-exit (``run_sandboxed``, ``true``, no platform) in
each sandbox this machine has: the sandbox's own cost per step.

Starts a test platform per worker count (FORGE_TEST_* servers when set, else embedded ones)
with ``FORGE_GIT_URL_TEMPLATE`` pointing at a local repository. Every measured run is a new
commit (runs are unique per commit), so each run pays discovery, one fetch and one worktree
checkout, as a real push would. The clock stops when ``pipeline.run.completed`` reaches the
event stream. Per-step overhead = total / 100 (the steps themselves do nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
from nats.js.api import DeliverPolicy

from forge_common.nats import Names
from forge_dev.testing import Platform, session_platform

PHASES = 5
PROJECTS = 20
STEP = "true"


def _git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_repo(root: Path, repository: str) -> Path:
    bare = root / f"{repository}.git"
    work = root / "work"
    bare.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    _git("init", "-q", "-b", "main", cwd=work)
    _git("remote", "add", "origin", str(bare), cwd=work)
    repo = ['forge_version = "1"']
    for p in range(PHASES):
        repo += [f"[phases.p{p}]", f"group = {p + 1}"]
    (work / ".forge").mkdir()
    (work / ".forge/repo.toml").write_text("\n".join(repo) + "\n")
    for i in range(PROJECTS):
        d = work / f"projects/proj{i:02d}/.forge"
        d.mkdir(parents=True)
        steps = "".join(f'[[phases.p{p}.steps]]\nname = "noop"\nrun = "{STEP}"\n' for p in range(PHASES))
        (d / "project.toml").write_text(f'name = "proj{i:02d}"\n{steps}')
    return work


def new_commit(work: Path) -> str:
    (work / "stamp").write_text(uuid.uuid4().hex)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "bench", cwd=work)
    _git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    return _git("rev-parse", "HEAD", cwd=work).strip()


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children (steps, for a worker)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _TICK


def _children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1]) == ppid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cpu_by_role(platform: Platform) -> dict[str, float]:
    """CPU seconds so far per role: pipeline, worker, s3 (moto), postgres (embedded only)."""
    roles: dict[str, float] = {}
    for proc in platform.stack.infra.processes:
        role = proc.name.split("-")[0]
        roles[role] = roles.get(role, 0.0) + _cpu(proc.popen.pid)
    pidfile = platform.data_dir / "postgres" / "postmaster.pid"
    if pidfile.exists():
        master = int(pidfile.read_text().split()[0])
        roles["postgres"] = _cpu(master) + sum(_cpu(p) for p in _children(master))
    return roles


async def one_run(
    session: aiohttp.ClientSession,
    platform: Platform,
    work: Path,
    repository: str,
    completions: dict[str, asyncio.Future[dict[str, Any]]],
) -> tuple[float, dict[str, Any]]:
    sha = new_commit(work)
    headers = platform.headers("bench@forge.local", "developer")
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    async with session.post(
        f"{platform.service_url('pipeline')}/v1/runs",
        json={"repository": repository, "branch": "main", "commit_sha": sha, "trigger_type": "push"},
        headers=headers,
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    run_id = body["id"]
    fut = completions.setdefault(run_id, loop.create_future())
    event = await asyncio.wait_for(fut, 120)
    elapsed = time.perf_counter() - started
    async with session.get(f"{platform.service_url('pipeline')}/v1/runs/{run_id}", headers=headers) as resp:
        run = await resp.json()
    assert event["data"]["status"] == "success", run
    steps = sum(len(t["steps"]) for p in run["phases"] for t in p["tasks"])
    assert steps == PHASES * PROJECTS, steps
    return elapsed, run


async def bench(workers: int, runs: int, sandbox: str = "") -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="forge-bench-exec-"))
    env = {
        "FORGE_GIT_URL_TEMPLATE": (root / "repos").as_uri() + "/{repository}.git",
        "FORGE_LOG_LEVEL": "debug" if VERBOSE else "warning",
    }
    if sandbox:
        env["FORGE_STEP_SANDBOX"] = sandbox
    with session_platform(env=env, workers=workers) as platform:
        repository = f"bench/exec-{uuid.uuid4().hex[:6]}"
        work = make_repo(root / "repos", repository)
        names = Names(platform.nats_prefix)
        nc = await nats.connect(platform.nats_url)
        completions: dict[str, asyncio.Future[dict[str, Any]]] = {}
        loop = asyncio.get_running_loop()

        async def on_event(msg: Any) -> None:
            data = msgspec.json.decode(msg.data)
            rid = data["data"]["run_id"]
            fut = completions.setdefault(rid, loop.create_future())
            if not fut.done():
                fut.set_result(data)

        js = nc.jetstream()
        await js.subscribe(
            names.event_subject("pipeline.run.completed"),
            stream=names.events_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=on_event,
        )
        await asyncio.sleep(3.0)  # every worker connected and pulling
        async with aiohttp.ClientSession() as session:
            warm, _ = await one_run(session, platform, work, repository, completions)
            times = []
            cpu: dict[str, list[float]] = {}
            for _ in range(runs):
                before = cpu_by_role(platform)
                elapsed, _run = await one_run(session, platform, work, repository, completions)
                after = cpu_by_role(platform)
                times.append(elapsed)
                for role, value in after.items():
                    cpu.setdefault(role, []).append(value - before.get(role, 0.0))
        await nc.close()
        if VERBOSE:
            _profile(platform)
    return {
        "workers": workers,
        "sandbox": sandbox or "default",
        "warmup_s": warm,
        "runs": times,
        "median_s": statistics.median(times),
        "best_s": min(times),
        "per_step_ms": statistics.median(times) / (PHASES * PROJECTS) * 1000,
        "cpu_ms_per_step": {
            role: statistics.median(v) / (PHASES * PROJECTS) * 1000
            for role, v in cpu.items()
            if statistics.median(v) > 0
        },
    }


VERBOSE = False


def _profile(platform: Platform) -> None:
    """Where the time went, from the processes' JSON logs (with FORGE_LOG_LEVEL=info)."""
    import collections
    import json

    jobs: dict[str, list[float]] = collections.defaultdict(list)
    http: dict[str, list[float]] = collections.defaultdict(list)
    for name in ("worker", "pipeline"):
        for line in platform.logs(name).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "worker.step_timing":
                for k in ("run_ms", "upload_ms", "report_ms"):
                    jobs["step." + k].append(rec[k])
            elif rec.get("message") == "worker.job_done":
                jobs[rec["job_type"]].append(rec["duration_ms"])
            elif rec.get("message") == "http.request":
                key = rec["method"] + " " + "/".join(rec["path"].split("/")[:3])
                http[key].append(rec["duration_ms"])
    for label, values in [*jobs.items(), *http.items()]:
        values.sort()
        print(
            f"  {label}: n={len(values)} p50={statistics.median(values):.1f} ms p90={values[int(len(values) * 0.9)]:.1f} ms"
        )


async def sandbox_cost(kinds: list[str], steps: int = 200) -> None:
    """One ``true`` step, spawn to exit, in each sandbox (bubblewrap: a sandbox per step and
    one per task): wall time and CPU (ours + children's); then a task's workspace (overlay and
    copy) from creation to removal. The worker's pidfd child watcher, as in the worker."""
    from forge_worker.sandbox import Limits
    from forge_worker.worker import _use_pidfd_child_watcher

    _use_pidfd_child_watcher()
    work = Path(tempfile.mkdtemp(prefix="forge-bench-sandbox-"))
    os.chmod(work, 0o711)  # noqa: S103 - the step user passes through to its workspace
    source = work / "checkout"
    for project in range(PROJECTS):  # the shape of the bench's repository: 20 projects
        (source / f"p{project}" / ".forge").mkdir(parents=True)
        (source / f"p{project}" / ".forge" / "project.toml").write_text("x\n")
        (source / f"p{project}" / "README").write_text("bench\n")
    limits = Limits(memory=1 << 30, processes=256, timeout=30.0)
    print(f"  load average {os.getloadavg()[0]:.1f} at the start")
    try:
        await _sandbox_kinds(kinds, work, source, limits, steps)
        await _workspace_kinds(work, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"  load average {os.getloadavg()[0]:.1f} at the end")


async def _sandbox_kinds(kinds: list[str], work: Path, source: Path, limits: Any, steps: int) -> None:
    import resource

    from forge_worker.sandbox import Sandbox, SandboxUnavailable, Workspace, run_sandboxed

    variants = [(kind, scope) for kind in kinds for scope in (("task", "step") if kind == "bwrap" else ("step",))]
    for kind, scope in variants:
        try:
            sandbox = await Sandbox.create(kind, work_dir=work / "steps", scope=scope)
        except SandboxUnavailable as exc:
            print(f"  sandbox {kind}: unavailable ({exc})")
            continue
        workspace = await Workspace.for_sandbox(sandbox, source)
        sink: list[bytes] = []
        env = {"CI": "true"}
        for _ in range(20):  # warm-up
            await run_sandboxed(sandbox, ["true"], workspace, ".", env, limits, sink.append)
        walls = []
        # A task sandbox's steps are its runner's children, reaped by it: its CPU counts them.
        shared = [task.keep for task in workspace.task_sandboxes.values()]
        inside = [pid for keep in shared for pid in keep]
        cpu_before = _own_cpu(resource) + sum(_cpu(pid) for pid in inside)
        for _ in range(steps):
            started = time.perf_counter()
            outcome = await run_sandboxed(sandbox, ["true"], workspace, ".", env, limits, sink.append)
            walls.append((time.perf_counter() - started) * 1000)
            assert outcome.exit_code == 0, b"".join(sink)
        assert [task.keep for task in workspace.task_sandboxes.values()] == shared, "the task sandbox was replaced"
        cpu = (_own_cpu(resource) + sum(_cpu(pid) for pid in inside) - cpu_before) / steps * 1000
        await workspace.release()
        label = f"{sandbox.kind}, a sandbox per {scope}" if sandbox.kind == "bwrap" else sandbox.kind
        print(
            f"  sandbox {label}: per step median {statistics.median(walls):.1f} ms wall, "
            f"p90 {sorted(walls)[int(steps * 0.9)]:.1f} ms, {cpu:.1f} ms CPU (worker + sandbox + true)"
        )


async def _workspace_kinds(work: Path, source: Path) -> None:
    """A task's workspace over the bench repository's checkout, made and removed (20 times)."""
    import resource

    from forge_worker.sandbox import Sandbox, SandboxUnavailable, Workspace

    for kind in ("overlay", "copy"):
        try:
            sandbox = await Sandbox.create("auto", work_dir=work / "steps", workspace=kind)
        except SandboxUnavailable as exc:
            print(f"  workspace {kind}: unavailable ({exc})")
            continue
        cpu_before = _own_cpu(resource)
        walls = []
        for _ in range(20):
            started = time.perf_counter()
            workspace = await Workspace.for_sandbox(sandbox, source)
            await workspace.release()
            walls.append((time.perf_counter() - started) * 1000)
        print(
            f"  per task: the workspace ({kind}, {PROJECTS} projects) median {statistics.median(walls):.1f} ms wall, "
            f"{(_own_cpu(resource) - cpu_before) / 20 * 1000:.1f} ms CPU (made and removed)"
        )


def _own_cpu(resource: Any) -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--step", default="true", help='the command of every step (e.g. "echo ok" to upload logs)')
    parser.add_argument("--verbose", action="store_true", help="print job and HTTP latencies (info logs)")
    parser.add_argument("--sandbox", default="", help="FORGE_STEP_SANDBOX values to compare, e.g. auto,none")
    parser.add_argument("--sandbox-only", action="store_true", help="only the direct per-step sandbox measurement")
    args = parser.parse_args()
    global VERBOSE, STEP
    VERBOSE = args.verbose
    STEP = args.step
    sandboxes = [k.strip() for k in args.sandbox.split(",") if k.strip()]
    if sandboxes or args.sandbox_only:
        await sandbox_cost(sorted({"bwrap", "unshare", "none", *sandboxes} - {"auto"}))
        if args.sandbox_only:
            return
    for count in (int(w) for w in args.workers.split(",")):
        for sandbox in sandboxes or [""]:
            await _print_bench(count, args.runs, sandbox)


async def _print_bench(count: int, runs: int, sandbox: str) -> None:
    result = await bench(count, runs, sandbox)
    print(
        f"sandbox={result['sandbox']} workers={result['workers']}: median {result['median_s'] * 1000:.0f} ms, "
        f"best {result['best_s'] * 1000:.0f} ms, per step {result['per_step_ms']:.1f} ms "
        f"(warm-up {result['warmup_s'] * 1000:.0f} ms; runs {', '.join(f'{t * 1000:.0f}' for t in result['runs'])} ms)"
    )
    cpu = result["cpu_ms_per_step"]
    print(
        f"  CPU per step: {sum(cpu.values()):.1f} ms in total; "
        + ", ".join(f"{role} {ms:.1f} ms" for role, ms in sorted(cpu.items(), key=lambda kv: -kv[1]))
    )


if __name__ == "__main__":
    asyncio.run(main())
