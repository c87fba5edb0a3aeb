"""Throughput of single-step runs through the gateway, and the serial chain (issue 11).

    .venv/bin/python -m bench.throughput [--runs 600] [--reps 3] [--workers 2] [--bursts 20]
                                         [--modes 8,32,burst,chain] [--profile SECONDS]
                                         [--env NAME=VALUE ...] [--step COMMAND]

Starts a test platform (FORGE_TEST_* servers when set, else embedded ones) with 2 workers and
``FORGE_GIT_URL_TEMPLATE`` pointing at a local repository whose commits are made beforehand
(one ``git fast-import``: runs are unique per commit, so every run is a new commit, and making
commits is not measured). Each run has one phase, one project, one step (``true``, or ``--step``:
e.g. ``--step 'echo built'`` for steps that print, whose logs are uploaded and indexed).

* closed loop, 8 and 32 in flight: each lane POSTs ``/v1/runs`` through the gateway and starts
  its next run when ``pipeline.run.completed`` of its run reaches ``FORGE_EVENTS``;
* burst: 32 clients POST at once, the next burst when all 32 completed;
* serial chain: one run of 100 phases in 100 groups, one step each: ms per hop = POST to
  completion / 100, and where a hop went (medians of the recorded times: step end -> next
  task dispatched, dispatched -> step start, the step).

Per configuration and repetition: runs/min (completed runs / wall time from the first POST to
the last completion), latency (POST to completion event) p50/p95/p99/max, failures (a POST that
was refused or a run that did not succeed), lost (no completion within 60 s after the last), and
CPU per run by process (``/proc``: the platform's processes with their reaped children; the
Postgres backends of the platform's database; the NATS server, which may serve others too).
The 1-, 5- and 15-minute load averages are printed with every figure: on a shared machine they
say how much of the CPU the stack had. ``--profile N`` records a process (``--profile-process``: pipeline or worker) with
``py-spy`` (when installed) for N seconds of the 32-in-flight loop and prints its top frames.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import nats
import psycopg
from nats.js.api import DeliverPolicy

from bench.common import percentile
from forge_common.nats import Names
from forge_dev.testing import Platform, session_platform

from .pipeline_exec import _children, _cpu

SINGLE_REPO = 'forge_version = "1"\n[phases.check]\ngroup = 1\n'


def single_project(command: str) -> str:
    return f'name = "app"\n[[phases.check.steps]]\nname = "ok"\nrun = {json.dumps(command)}\n'


CHAIN_PHASES = 100
# The process --profile records (--profile-process): "pipeline" or "worker" (the first).
PROFILED = "pipeline"
WAIT_LOST = 60.0


def _git(*args: str, cwd: Path, stdin: bytes | None = None) -> str:
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **env}, input=stdin, check=True, capture_output=True
    ).stdout.decode()


def make_repo(root: Path, repository: str, files: dict[str, str], commits: int) -> list[str]:
    """A bare repository with ``commits`` commits of ``files`` (each with a new stamp), made by
    one ``git fast-import``; returns their SHAs, oldest first."""
    bare = root / f"{repository}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=root)
    stream = bytearray()
    for i in range(commits):
        blobs = {**files, "stamp": f"{i} {uuid.uuid4().hex}\n"}
        stream += b"commit refs/heads/main\n"
        stream += b"committer b <b@b> %d +0000\n" % (1_700_000_000 + i)
        stream += b"data 6\nbench\n"
        if i == 0:
            stream += b"deleteall\n"
        for path, content in blobs.items():
            data = content.encode()
            stream += b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data)
        stream += b"\n"
    _git("fast-import", "--quiet", cwd=bare, stdin=bytes(stream))
    return _git("rev-list", "--reverse", "main", cwd=bare).split()


def chain_files(command: str) -> dict[str, str]:
    repo = ['forge_version = "1"'] + [f"[phases.p{i:03d}]\ngroup = {i + 1}" for i in range(CHAIN_PHASES)]
    run = json.dumps(command)  # a TOML basic string
    steps = "".join(f'[[phases.p{i:03d}.steps]]\nname = "s"\nrun = {run}\n' for i in range(CHAIN_PHASES))
    return {".forge/repo.toml": "\n".join(repo) + "\n", "app/.forge/project.toml": f'name = "app"\n{steps}'}


# --- CPU by process -------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _own_cpu(pid: int) -> float:
    """CPU seconds of the process itself (utime + stime, without its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def cpu_by_process(platform: Platform, database: str) -> dict[str, float]:
    """CPU seconds so far: each platform process (with its reaped children, e.g. a worker's
    steps), the Postgres backends of the platform's database, and the NATS server."""
    roles: dict[str, float] = {}
    for proc in platform.stack.infra.processes:
        role = proc.name.split("-")[0]
        pid = proc.popen.pid
        own = _own_cpu(pid)
        roles[role] = roles.get(role, 0.0) + own
        # What a process ran (a worker's git and step sandboxes): reaped and still running.
        children = _cpu(pid) - own + sum(_cpu(c) for c in _children(pid))
        if children > 0:
            roles[f"{role} children"] = roles.get(f"{role} children", 0.0) + children
    pids = _all_pids()
    roles["postgres"] = sum(_cpu(p) for p in pids if database in _cmdline(p) and "postgres" in _cmdline(p))
    port = f"-p {urlsplit(platform.nats_url).port} "
    roles["nats"] = sum(_cpu(p) for p in pids if "nats-server" in _cmdline(p) and port in _cmdline(p))
    return roles


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- the load -------------------------------------------------------------------------------------


class Stack:
    def __init__(self, platform: Platform, session: aiohttp.ClientSession, repository: str, shas: list[str]) -> None:
        self.platform = platform
        self.session = session
        self.repository = repository
        self.shas: Iterator[str] = iter(shas)
        self.headers = platform.headers("bench@forge.local", "developer")
        self.completions: dict[str, asyncio.Future[str]] = {}
        self.last_run_id = ""

    def on_completed(self, run_id: str, status: str) -> None:
        fut = self.completions.setdefault(run_id, asyncio.get_running_loop().create_future())
        if not fut.done():
            fut.set_result(status)

    async def post(self, sha: str | None = None, repository: str | None = None) -> str | None:
        body = {
            "repository": repository or self.repository,
            "branch": "main",
            "commit_sha": sha or next(self.shas),
            "trigger_type": "push",
        }
        url = f"{self.platform.gateway_url}/v1/runs"
        try:
            async with self.session.post(url, json=body, headers=self.headers) as resp:
                if resp.status != 201:
                    print(f"  POST /v1/runs answered {resp.status}: {(await resp.text())[:200]}")
                    return None
                run_id = str((await resp.json())["id"])
        except aiohttp.ClientError as exc:
            print(f"  POST /v1/runs failed: {exc!r}")
            return None
        self.completions.setdefault(run_id, asyncio.get_running_loop().create_future())
        self.last_run_id = run_id
        return run_id

    async def one(self, sha: str | None = None, repository: str | None = None) -> tuple[float, str]:
        """POST a run and wait for its completion: (seconds, final status or why not)."""
        started = time.perf_counter()
        run_id = await self.post(sha, repository)
        if run_id is None:
            return time.perf_counter() - started, "refused"
        try:
            status = await asyncio.wait_for(asyncio.shield(self.completions[run_id]), WAIT_LOST)
        except TimeoutError:
            return time.perf_counter() - started, "lost"
        return time.perf_counter() - started, status


class Result(msgspec.Struct):
    label: str
    load: str
    runs: int
    wall: float
    latencies: list[float]
    failures: int
    lost: int
    cpu_ms: dict[str, float]

    def line(self) -> str:
        lat = sorted(self.latencies)
        ms = [percentile(lat, p) * 1000 for p in (50, 95, 99)]
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.cpu_ms.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        return (
            f"{self.label:>9}: {self.runs / self.wall * 60:7.0f} runs/min  latency p50 {ms[0]:5.0f} p95 {ms[1]:5.0f} "
            f"p99 {ms[2]:5.0f} max {max(lat) * 1000:6.0f} ms  failures {self.failures} lost {self.lost}  "
            f"load {self.load}\n{'':>11}CPU ms/run: total {sum(self.cpu_ms.values()):.1f} = {cpu}"
        )


async def measure(stack: Stack, label: str, database: str, load: Any) -> Result:
    before = cpu_by_process(stack.platform, database)
    started = time.perf_counter()
    outcomes: list[tuple[float, str]] = await load()
    wall = time.perf_counter() - started
    after = cpu_by_process(stack.platform, database)
    n = len(outcomes)
    cpu = {k: (after[k] - before.get(k, 0.0)) / n * 1000 for k in after}
    return Result(
        label=label,
        load=loadavg(),
        runs=sum(1 for _, s in outcomes if s == "success"),
        wall=wall,
        latencies=[t for t, s in outcomes if s == "success"],
        failures=sum(1 for _, s in outcomes if s not in ("success", "lost")),
        lost=sum(1 for _, s in outcomes if s == "lost"),
        cpu_ms=cpu,
    )


async def closed_loop(stack: Stack, lanes: int, runs: int) -> list[tuple[float, str]]:
    left = iter(range(runs))
    out: list[tuple[float, str]] = []

    async def lane() -> None:
        for _ in left:
            out.append(await stack.one())

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return out


async def bursts(stack: Stack, clients: int, count: int) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    for _ in range(count):
        out += await asyncio.gather(*(stack.one() for _ in range(clients)))
    return out


# --- main -----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> None:
    modes = args.modes.split(",")
    root = Path(tempfile.mkdtemp(prefix="forge-bench-throughput-"))
    env = {
        "FORGE_GIT_URL_TEMPLATE": (root / "repos").as_uri() + "/{repository}.git",
        "FORGE_LOG_LEVEL": "warning",
        "FORGE_DB_POOL_MAX": "10",
        # One principal POSTs every run: the gateway's per-principal limit (1,000 a minute by
        # default) would cap the measurement, not the platform.
        "FORGE_RATE_LIMIT": "1000000",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    closed = [m for m in modes if m.isdigit()]
    per_rep = args.runs * len(closed) + (32 * args.bursts if "burst" in modes else 0)
    repository = f"bench/tp-{uuid.uuid4().hex[:6]}"
    chain_repository = f"bench/chain-{uuid.uuid4().hex[:6]}"
    files = {".forge/repo.toml": SINGLE_REPO, "app/.forge/project.toml": single_project(args.step)}
    shas = make_repo(root / "repos", repository, files, per_rep * args.reps + 60)
    chain_shas = (
        make_repo(root / "repos", chain_repository, chain_files(args.step), args.reps + 1) if "chain" in modes else []
    )
    print(f"{len(shas)} commits made; machine: {os.cpu_count()} CPUs, load {loadavg()}")
    try:
        with session_platform(env=env, workers=args.workers) as platform:
            await _bench_on(platform, args, modes, closed, repository, shas, chain_repository, chain_shas)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _bench_on(
    platform: Platform,
    args: argparse.Namespace,
    modes: list[str],
    closed: list[str],
    repository: str,
    shas: list[str],
    chain_repository: str,
    chain_shas: list[str],
) -> None:
    database = platform.stack.config.database_name
    names = Names(platform.nats_prefix)
    nc = await nats.connect(platform.nats_url)
    connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=2.0)  # below the servers' (5 s)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        stack = Stack(platform, session, repository, shas)

        async def on_event(msg: Any) -> None:
            data = msgspec.json.decode(msg.data)["data"]
            stack.on_completed(data["run_id"], data.get("status", "?"))

        await nc.jetstream().subscribe(
            names.event_subject("pipeline.run.completed"),
            stream=names.events_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=on_event,
        )
        for _ in range(20):  # warm-up: connections, caches, the worker's git mirror
            await stack.one()
        await closed_loop(stack, 8, 20)
        chain_left = iter(chain_shas)
        if chain_shas:
            await stack.one(next(chain_left), chain_repository)
        for rep in range(1, args.reps + 1):
            print(f"repetition {rep}")
            for lanes in closed:
                profiler = (
                    _start_profile(platform, args.profile)
                    if lanes == closed[-1] and args.profile and rep == args.reps
                    else None
                )
                result = await measure(
                    stack, f"{lanes} flight", database, lambda n=int(lanes): closed_loop(stack, n, args.runs)
                )
                print(result.line(), flush=True)
                _finish_profile(profiler)
            if "burst" in modes:
                result = await measure(stack, "burst 32", database, lambda: bursts(stack, 32, args.bursts))
                print(result.line(), flush=True)
            if chain_shas:
                seconds, status = await stack.one(next(chain_left), chain_repository)
                print(
                    f"    chain: {seconds / CHAIN_PHASES * 1000:.2f} ms/hop ({CHAIN_PHASES} groups in {seconds:.2f} s, {status})  load {loadavg()}",
                    flush=True,
                )
                print(f"           {await hop_breakdown(platform, stack.last_run_id)}", flush=True)
    await nc.close()


async def hop_breakdown(platform: Platform, run_id: str) -> str:
    """Where a chain's hop went, medians over its hops from the recorded times: from a step's
    end (the worker's clock) to the next task's dispatch (the database's: report, reply, the
    next group's dispatch transaction), from that dispatch to the next step's start (JetStream,
    the worker's fetch, checkout, workspace), and the step itself (``true`` in its sandbox)."""
    async with await psycopg.AsyncConnection.connect(platform.database_url) as conn:
        cur = await conn.execute(
            """SELECT t.dispatched_at, s.started_at, s.completed_at FROM pipeline.tasks t
               JOIN pipeline.phases p ON p.id = t.phase_id JOIN pipeline.steps s ON s.task_id = t.id
               WHERE t.run_id = %s ORDER BY p.group_number""",
            (run_id,),
        )
        rows = await cur.fetchall()
    if len(rows) < 2:
        return "no hops recorded"

    def ms(a: Any, b: Any) -> float:
        return float((b - a).total_seconds() * 1000)

    hops = list(itertools.pairwise(rows))
    handover = statistics.median(ms(prev[2], cur[0]) for prev, cur in hops)
    start = statistics.median(ms(cur[0], cur[1]) for _, cur in hops)
    step = statistics.median(ms(cur[1], cur[2]) for _, cur in hops)
    return f"per hop (medians): step end -> next dispatched {handover:.2f}, dispatched -> step start {start:.2f}, step {step:.2f} ms"


def _start_profile(platform: Platform, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("  (py-spy not installed: no profile)")
        return None
    pid = next(p.popen.pid for p in platform.stack.infra.processes if p.name == PROFILED)
    out = Path(tempfile.mkdtemp(prefix="forge-bench-profile-")) / f"{PROFILED}.txt"
    cmd = [
        spy,
        "record",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
        str(out),
        "--nonblocking",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.out = out  # type: ignore[attr-defined]
    return proc


def _finish_profile(proc: subprocess.Popen[bytes] | None, top: int = 25) -> None:
    """Print where the profiled process spent its samples: self time by function, and
    inclusive time of Forge's own functions."""
    if proc is None:
        return
    proc.wait()
    out: Path = proc.out  # type: ignore[attr-defined]
    if not out.exists():
        print("  (py-spy recorded nothing)")
        return
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for frame in set(frames):
            if "forge_" in frame:
                inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"  py-spy, {PROFILED} process, {total} samples: self time")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {n / total * 100:5.1f}%  {frame}")
    print("  inclusive, forge code")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {n / total * 100:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=600, help="runs per closed-loop configuration and repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bursts", type=int, default=20, help="bursts of 32 per repetition")
    parser.add_argument("--modes", default="8,32,burst,chain")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy a process for N s (last repetition)")
    parser.add_argument("--profile-process", default="pipeline", help="pipeline or worker")
    parser.add_argument(
        "--step", default="true", help="every step's command (default true: prints nothing, so has no log)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for every service (repeatable)"
    )
    args = parser.parse_args()
    global PROFILED
    PROFILED = args.profile_process
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
