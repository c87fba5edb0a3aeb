"""The dispatcher: drives each run through discovery, its phase groups and release triggers.

Replicas share runs through row leases in Postgres (``FOR UPDATE SKIP LOCKED`` with expiry,
renewed every third of the TTL). A replica drives the runs it leased, one asyncio task each:

1. discovery: a job on ``pipeline.discovery.{run}``; the reply's plan is stored as the run tree;
2. phase groups in ascending order: every pending task of the group is a job on
   ``pipeline.tasks.{run}.{task}``, published concurrently; workers report task and step status
   through the HTTP API (whose roll-ups finish phases and fail or complete the run) and reply;
3. once the run succeeded: release triggers are evaluated and a release job is queued on
   ``pipeline.releases.{run}`` through the outbox, in the same transaction that records it.

Progress is the database: a replica that takes over a run reloads the tree, skips finished
tasks and re-publishes unfinished ones with their original ``Nats-Msg-Id`` (JetStream drops the
copy if the first publish got through) and their original deadline. Replies go to an inbox
derived from run and job ids, so the new owner hears replies to jobs its predecessor sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import os
import socket
import time
import uuid
from typing import Any

import msgspec
import psycopg
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from forge_common import jobs
from forge_common.errors import InvalidRequest
from forge_common.jobs import JobSettings
from forge_common.outbox import add_message
from forge_common.results import encode_result, resolve_result
from forge_common.runtime import Runtime
from forge_common.settings import load

from . import execution_store as xstore
from . import service, store
from .domain import FINISHED, PhasePlan

__all__ = ["Dispatcher", "DispatcherSettings", "evaluate_release_triggers", "start", "stop"]

log = structlog.get_logger(__name__)
_encode = msgspec.json.encode
_RETENTION_DAYS = {"dev": 7, "staging": 30, "production": 90}


class DispatcherSettings(msgspec.Struct, kw_only=True):
    """``FORGE_DISPATCHER_*``; whether it runs at all is the service's ``FORGE_DISPATCHER_ENABLED``."""

    dispatcher_lease_ttl: float = 15.0
    dispatcher_poll_interval: float = 1.0
    dispatcher_max_runs: int = 500
    # How often a waiting driver re-reads its tasks' status (replies are the fast path).
    dispatcher_check_interval: float = 5.0

    def validate(self) -> list[str]:
        problems = []
        if self.dispatcher_lease_ttl < 1:
            problems.append("FORGE_DISPATCHER_LEASE_TTL must be at least 1s")
        if self.dispatcher_max_runs < 1:
            problems.append("FORGE_DISPATCHER_MAX_RUNS must be >= 1")
        return problems


def evaluate_release_triggers(
    triggers: dict[str, list[dict[str, Any]]] | None, branch: str, tag: str | None
) -> list[dict[str, Any]]:
    """Projects to release for a successful run: ``{"project", "trigger"}`` per match.

    ``{branch = "main"}`` (a glob) matches branch pushes; ``{tag = true}`` any tag push and
    ``{tag = "v*"}`` matching tags. A tag push wins over a branch rule for the same project.
    """
    out: list[dict[str, Any]] = []
    for project, rules in sorted((triggers or {}).items()):
        chosen: dict[str, str] | None = None
        for rule in rules or []:
            if "tag" in rule and tag:
                want = rule["tag"]
                if want is True or (isinstance(want, str) and fnmatch.fnmatchcase(tag, want)):
                    chosen = {"trigger_type": "tag", "tag": tag}
                    break
            if "branch" in rule and not tag and chosen is None:
                want = rule["branch"]
                if isinstance(want, str) and fnmatch.fnmatchcase(branch, want):
                    chosen = {"trigger_type": "branch_push", "branch": branch}
        if chosen is not None:
            out.append({"project": project, "trigger": chosen})
    return out


class _RunEnded(Exception):
    """The run finished (failed, cancelled or completed elsewhere): stop driving it."""


class Dispatcher:
    def __init__(self, runtime: Runtime, settings: DispatcherSettings, job_settings: JobSettings) -> None:
        self.rt = runtime
        self.settings = settings
        self.jobs = job_settings
        self.names = runtime.names
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.drivers: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await jobs.ensure_job_streams(self.rt.js, self.names, self.jobs, update=True)
        nc = self.rt.nc
        self._subs.append(await nc.subscribe(self.names.subject("pipeline.cancel.*"), cb=self._on_cancel))
        self._subs.append(
            await nc.subscribe(
                jobs.max_deliveries_advisory(self.names), queue="forge-dispatcher-dlq", cb=self._on_max_deliveries
            )
        )
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="dispatcher-claim"),
            asyncio.create_task(self._renew_loop(), name="dispatcher-renew"),
            asyncio.create_task(self._listen(), name="dispatcher-listen"),
        ]
        log.info("dispatcher.started", owner=self.owner, lease_ttl=self.settings.dispatcher_lease_ttl)

    async def stop(self) -> None:
        self._stopping = True
        for task in [*self._tasks, *self.drivers.values()]:
            task.cancel()
        for task in [*self._tasks, *self.drivers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        # Hand the runs over at once instead of letting the leases expire.
        if self.drivers:
            with contextlib.suppress(Exception):
                async with self.rt.pool.connection() as conn, conn.transaction():
                    for run_id in self.drivers:
                        await xstore.release_lease(conn, self.owner, run_id)
        self.drivers.clear()

    async def _listen(self) -> None:
        """Wake the claim loop when a run is created (its event lands in the outbox)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.rt.settings.database_url, autocommit=True
                ) as conn:
                    await conn.execute('LISTEN "forge_outbox_pipeline"')
                    self._wake.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling covers the gap
                log.warning("dispatcher.listen_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self.claim_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database restarting; try again
                log.warning("dispatcher.claim_failed", error=str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.dispatcher_poll_interval)

    async def claim_once(self) -> list[str]:
        room = self.settings.dispatcher_max_runs - len(self.drivers)
        if room <= 0 or self._stopping:
            return []
        async with self.rt.pool.connection() as conn, conn.transaction():
            claimed = await xstore.claim_runs(
                conn, self.owner, self.settings.dispatcher_lease_ttl, room, list(self.drivers)
            )
        for run_id in claimed:
            self._start_driver(run_id)
        return claimed

    def _start_driver(self, run_id: str) -> None:
        task = asyncio.create_task(self._drive(run_id), name=f"run-{run_id}")
        self.drivers[run_id] = task
        task.add_done_callback(functools.partial(self._driver_done, run_id))

    def _driver_done(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self.drivers.get(run_id) is task:
            del self.drivers[run_id]
        self._wake.set()

    async def _renew_loop(self) -> None:
        interval = self.settings.dispatcher_lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self.drivers:
                continue
            try:
                async with self.rt.pool.connection() as conn, conn.transaction():
                    states = await xstore.renew_leases(
                        conn, self.owner, self.settings.dispatcher_lease_ttl, list(self.drivers)
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("dispatcher.renew_failed", error=str(exc))
                continue
            for run_id, task in list(self.drivers.items()):
                state = states.get(run_id)
                if state is None or (state["lease_owner"] not in (None, self.owner)):
                    log.warning("dispatcher.lease_lost", run_id=run_id, owner=state and state["lease_owner"])
                    task.cancel()

    # --- NATS callbacks -----------------------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        run_id = msg.subject.rsplit(".", 1)[-1]
        task = self.drivers.get(run_id)
        if task is not None:
            task.cancel()
            await self._purge(run_id)

    async def _purge(self, run_id: str, subject: str | None = None) -> None:
        stream = self.names.stream(jobs.JOBS_STREAM)
        subjects = (
            [subject]
            if subject
            else [
                jobs.job_subject(self.names, "discovery", run_id),
                self.names.subject(f"pipeline.tasks.{run_id}.>"),
            ]
        )
        for subj in subjects:
            with contextlib.suppress(Exception):
                await self.rt.js.purge_stream(stream, subject=subj)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """A job exhausted its deliveries without an answer: dead-letter it and fail its task."""
        try:
            advisory = msgspec.json.decode(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", self.jobs.job_max_deliver))
            stream = self.names.stream(jobs.JOBS_STREAM)
            try:
                raw = await self.rt.js.get_msg(stream, seq)
            except NotFoundError:
                return  # already handled (the worker dead-lettered it itself) or purged
            headers = jobs.decode_headers(raw.headers)
            subject = raw.subject or ""
            job_type = jobs.job_type_of(self.names, subject) or "ci"
            payload = msgspec.json.decode(raw.data or b"{}")
            run_id = str(payload.get("run_id", "unknown"))
            reason = (
                f"job was not acknowledged after {deliveries} deliveries "
                "(the worker crashed or exceeded the ack wait each time)"
            )
            await jobs.dead_letter(
                self.rt.js,
                self.names,
                job_type=job_type,
                run_id=run_id,
                original_subject=subject,
                payload=raw.data or b"",
                headers=headers,
                reason=reason,
                deliveries=deliveries,
            )
            with contextlib.suppress(Exception):
                await self.rt.js.delete_msg(stream, seq)
            if job_type == "ci" and payload.get("task_id"):
                with contextlib.suppress(Exception):
                    async with self.rt.pool.connection() as conn, conn.transaction():
                        await service.mark_task(conn, str(payload["task_id"]), "failed", f"dead-lettered: {reason}")
            reply_to = headers.get(jobs.HDR_REPLY_TO)
            if reply_to:
                reply = jobs.JobReply(status="failed", error=f"dead-lettered: {reason}", result={"dead_lettered": True})
                await self.rt.nc.publish(reply_to, _encode(reply))
            log.warning("dispatcher.dead_lettered", run_id=run_id, job_type=job_type, seq=seq)
        except Exception as exc:  # noqa: BLE001
            log.error("dispatcher.dead_letter_failed", error=str(exc))

    # --- driving one run ----------------------------------------------------------------------

    async def _drive(self, run_id: str) -> None:
        driver = RunDriver(self, run_id)
        try:
            await driver.drive()
        except (asyncio.CancelledError, _RunEnded):
            pass
        except Exception:
            log.exception("dispatcher.driver_failed", run_id=run_id)
            await asyncio.sleep(self.settings.dispatcher_poll_interval)
            with contextlib.suppress(Exception):
                async with self.rt.pool.connection() as conn, conn.transaction():
                    await xstore.release_lease(conn, self.owner, run_id)
        finally:
            await driver.close()


class RunDriver:
    def __init__(self, dispatcher: Dispatcher, run_id: str) -> None:
        self.d = dispatcher
        self.rt = dispatcher.rt
        self.names = dispatcher.names
        self.run_id = run_id
        self.waiters: dict[str, asyncio.Future[bytes]] = {}
        self.sub: Subscription | None = None

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        for fut in self.waiters.values():
            fut.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        fut = self.waiters.get(job_id)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)
        else:
            log.info("dispatcher.late_reply_ignored", run_id=self.run_id, job_id=job_id)

    def _waiter(self, job_id: str) -> asyncio.Future[bytes]:
        fut = self.waiters.get(job_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self.waiters[job_id] = fut
        return fut

    async def _publish(self, job_type: jobs.JobType, job_id: str, msg_id: str, payload: dict[str, Any]) -> None:
        headers = {
            jobs.HDR_REPLY_TO: jobs.inbox_subject(self.names, self.run_id, job_id),
            jobs.HDR_JOB_ID: job_id,
            jobs.HDR_JOB_TYPE: job_type,
            "Nats-Msg-Id": msg_id,
        }
        subject = jobs.job_subject(self.names, job_type, self.run_id, job_id)
        # A job over 1 MB (huge step commands) travels through S3 like a large result.
        body = await encode_result(self.rt.s3, self.run_id, f"{job_type}-job", job_id, payload)
        await self.rt.js.publish(subject, body, headers=headers, timeout=5.0)

    async def _reply(self, raw: bytes) -> jobs.JobReply:
        value = await resolve_result(self.rt.s3, raw)
        return msgspec.convert(value, jobs.JobReply)

    async def drive(self) -> None:
        self.sub = await self.rt.nc.subscribe(jobs.inbox_subject(self.names, self.run_id, "*"), cb=self._on_reply)
        async with self.rt.pool.connection() as conn:
            run = await xstore.run_for_dispatch(conn, self.run_id)
        if run is None:
            return
        if run["status"] in ("pending", "running"):
            if run["discovered_at"] is None:
                await self._discover(run)
            await self._run_groups(run)
        await self._release(run)

    # discovery

    async def _discover(self, run: dict[str, Any]) -> None:
        job_id = str(uuid.uuid4())
        timeout = self.d.jobs.timeout("discovery")
        async with self.rt.pool.connection() as conn, conn.transaction():
            await store.set_run_running(conn, self.run_id)
        fut = self._waiter(job_id)
        payload = {
            "job_id": job_id,
            "run_id": self.run_id,
            "repository": run["repository"],
            "commit_sha": run["commit_sha"],
            "branch": run["branch"],
        }
        await self._publish("discovery", job_id, f"discovery:{job_id}", payload)
        try:
            raw = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            await self._purge_subject(jobs.job_subject(self.names, "discovery", self.run_id))
            await self._fail(f"discovery timed out after {_fmt(timeout)}", "discovery")
            raise _RunEnded from None
        reply = await self._reply(raw)
        if reply.status != "success":
            error = reply.error or "discovery failed"
            await self._fail(f"discovery failed: {error}", "discovery")
            raise _RunEnded
        result = reply.result or {}
        try:
            phases = msgspec.convert(result.get("phases", []), list[PhasePlan])
            async with self.rt.pool.connection() as conn, conn.transaction():
                await service.store_discovery(conn, self.run_id, phases, result.get("release_triggers") or {})
        except (msgspec.ValidationError, InvalidRequest) as exc:
            # A plan the service refuses would fail the same way on every retry.
            await self._fail(f"discovery returned an unusable plan: {exc}", "discovery")
            raise _RunEnded from exc
        log.info("dispatcher.discovered", run_id=self.run_id, phases=len(phases))

    async def _fail(self, message: str, phase: str | None) -> None:
        async with self.rt.pool.connection() as conn, conn.transaction():
            await service.fail_run(conn, self.run_id, message, phase)
        await self._cancel_workers()

    async def _cancel_workers(self) -> None:
        with contextlib.suppress(Exception):
            await self.rt.nc.publish(
                self.names.subject(f"pipeline.cancel.{self.run_id}"),
                _encode({"run_id": self.run_id, "reason": "run ended"}),
            )
        await self.d._purge(self.run_id)

    async def _purge_subject(self, subject: str) -> None:
        await self.d._purge(self.run_id, subject)

    # phase groups

    async def _run_groups(self, run: dict[str, Any]) -> None:
        async with self.rt.pool.connection() as conn:
            plan = await service.load_plan(conn, self.run_id)
        groups: dict[int, list[PhasePlan]] = {}
        for phase in plan:
            groups.setdefault(phase.group_number, []).append(phase)
        for number in sorted(groups):
            phases = groups[number]
            if any(p.status == "failed" for p in phases):
                await self._ensure_finished("a phase failed")
                raise _RunEnded
            if all(p.status in ("success", "skipped") for p in phases):
                continue
            await self._run_group(run, number, phases)
        async with self.rt.pool.connection() as conn, conn.transaction():
            completed = await service.complete_run(conn, self.run_id)
        if completed:
            log.info("dispatcher.completed", run_id=self.run_id)

    async def _ensure_finished(self, why: str) -> None:
        async with self.rt.pool.connection() as conn:
            status = await xstore.run_status(conn, self.run_id)
        if status in ("pending", "running"):
            await self._fail(why, None)

    async def _run_group(self, run: dict[str, Any], number: int, phases: list[PhasePlan]) -> None:
        tasks = {t.id: (p, t) for p in phases for t in p.tasks if t.id and t.status not in FINISHED}
        empty = [p for p in phases if not p.tasks and p.status not in FINISHED]
        async with self.rt.pool.connection() as conn, conn.transaction():
            for phase in empty:
                assert phase.id is not None
                await store.finish_phase(conn, phase.id, "success")
            dispatched = await xstore.mark_dispatched(conn, list(tasks)) if tasks else {}
        if not tasks:
            return
        now_mono = time.monotonic()
        deadlines: dict[str, float] = {}
        timeouts: dict[str, float] = {}
        for task_id, (phase, _task) in tasks.items():
            timeout = float(phase.timeout_seconds) if phase.timeout_seconds else self.d.jobs.timeout("ci")
            first, db_now = dispatched[task_id]
            elapsed = max(0.0, (db_now - first).total_seconds())
            timeouts[task_id] = timeout
            deadlines[task_id] = now_mono + timeout - elapsed
        futures = {task_id: self._waiter(task_id) for task_id in tasks}
        await asyncio.gather(
            *(
                self._publish("ci", task_id, f"ci:{task_id}", self._ci_payload(run, phase, task))
                for task_id, (phase, task) in tasks.items()
            )
        )
        pending = dict(futures)
        check_every = self.d.settings.dispatcher_check_interval
        while pending:
            now = time.monotonic()
            next_deadline = min(deadlines[t] for t in pending)
            wait = max(0.0, min(next_deadline - now, check_every))
            done, _ = await asyncio.wait(pending.values(), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            by_future = {f: t for t, f in pending.items()}
            failed: list[tuple[str, str]] = []
            for fut in done:
                task_id = by_future[fut]
                del pending[task_id]
                reply = await self._reply(fut.result())
                if reply.status != "success":
                    failed.append((task_id, reply.error or f"task {reply.status}"))
            if failed:
                await self._task_failures(failed, tasks)
                raise _RunEnded
            if not pending:
                break
            now = time.monotonic()
            overdue = [t for t in pending if deadlines[t] <= now]
            if overdue:
                errors = []
                for task_id in overdue:
                    phase = tasks[task_id][0]
                    which = f"phase {phase.name} timeout" if phase.timeout_seconds else "CI job timeout"
                    errors.append((task_id, f"timed out after {_fmt(timeouts[task_id])} ({which})"))
                    await self._purge_subject(jobs.job_subject(self.names, "ci", self.run_id, task_id))
                await self._task_failures(errors, tasks, timed_out=True)
                raise _RunEnded
            if not done:
                await self._reconcile(pending)
        await self._settle(list(tasks))

    async def _settle(self, task_ids: list[str]) -> None:
        """Every task of the group answered success. One whose report did not land (the worker
        replied but its status call was refused or lost) is recorded from the reply, so the
        roll-up finishes its phase before the next group starts."""
        async with self.rt.pool.connection() as conn:
            states = await xstore.task_states(conn, task_ids)
        missing = [t for t, s in states.items() if s["status"] not in FINISHED]
        if not missing:
            return
        async with self.rt.pool.connection() as conn, conn.transaction():
            for task_id in missing:
                current = (await xstore.task_states(conn, [task_id]))[task_id]["status"]
                if current == "pending":
                    await service.mark_task(conn, task_id, "running")
                if current in ("pending", "running"):
                    await service.mark_task(conn, task_id, "success")
        log.warning("dispatcher.settled_from_replies", run_id=self.run_id, tasks=len(missing))

    def _ci_payload(self, run: dict[str, Any], phase: PhasePlan, task: Any) -> dict[str, Any]:
        return {
            "job_id": task.id,
            "run_id": self.run_id,
            "task_id": task.id,
            "repository": run["repository"],
            "commit_sha": run["commit_sha"],
            "branch": run["branch"],
            "phase": phase.name,
            "project": task.project_name,
            "project_path": task.project_path,
            "steps": [
                {
                    "id": s.id,
                    "name": s.name,
                    "action": s.action,
                    "command": s.command,
                    "timeout_seconds": s.timeout_seconds,
                }
                for s in task.steps
            ],
        }

    async def _reconcile(self, pending: dict[str, asyncio.Future[bytes]]) -> None:
        """No reply for a while: the database may know more (a reply lost during a takeover,
        or the run cancelled or failed by someone else)."""
        async with self.rt.pool.connection() as conn:
            status = await xstore.run_status(conn, self.run_id)
            states = await xstore.task_states(conn, list(pending))
        if status not in ("pending", "running"):
            raise _RunEnded
        for task_id, state in states.items():
            if state["status"] in FINISHED and not pending[task_id].done():
                reply = jobs.JobReply(
                    status="success" if state["status"] in ("success", "skipped") else "failed",
                    error=state["error"],
                )
                pending[task_id].set_result(_encode(reply))

    async def _task_failures(
        self, failed: list[tuple[str, str]], tasks: dict[str, tuple[PhasePlan, Any]], timed_out: bool = False
    ) -> None:
        """Fail the tasks the database does not know as finished yet (timeouts, dead letters,
        workers that could not report); the roll-up then fails the run. Then stop the rest."""
        async with self.rt.pool.connection() as conn, conn.transaction():
            states = await xstore.task_states(conn, [t for t, _ in failed])
            for task_id, error in failed:
                if states.get(task_id, {}).get("status") not in FINISHED:
                    await service.mark_task(conn, task_id, "failed", error)
        # The run is over (the roll-up failed it); make sure of it, then stop what still runs:
        # the failing phase is failed, tasks of the group still running are cancelled.
        phase, task = tasks[failed[0][0]]
        async with self.rt.pool.connection() as conn, conn.transaction():
            status = await xstore.run_status(conn, self.run_id)
            if status in ("pending", "running"):
                message = f"task {task.project_name} of phase {phase.name} failed: {failed[0][1]}"
                await service.fail_run(conn, self.run_id, message, phase.name)
            await store.lock_run(conn, self.run_id)
            for phase_id in {tasks[task_id][0].id for task_id, _ in failed}:
                if phase_id is not None:
                    await xstore.fail_phase_if_open(conn, phase_id)
            await store.close_open_work(conn, self.run_id)
        await self._cancel_workers()
        log.info("dispatcher.run_failed", run_id=self.run_id, phase=phase.name, timed_out=timed_out)

    # release triggers

    async def _release(self, run: dict[str, Any]) -> None:
        async with self.rt.pool.connection() as conn, conn.transaction():
            fresh = await xstore.run_for_dispatch(conn, self.run_id)
            if fresh is None or fresh["status"] != "success" or fresh["release_evaluated_at"] is not None:
                return
            if not await xstore.mark_release_evaluated(conn, self.run_id):
                return
            projects = evaluate_release_triggers(fresh["release_triggers"], fresh["branch"], fresh["tag"])
            for project in projects:
                # The release service records the run's author (not the worker) as the trigger.
                project["trigger"]["triggered_by"] = fresh["triggered_by"]
            if not projects:
                await xstore.release_lease(conn, self.d.owner, self.run_id)
                return
            job_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"forge:release:{self.run_id}"))
            payload = {
                "job_id": job_id,
                "run_id": self.run_id,
                "repository": fresh["repository"],
                "commit_sha": fresh["commit_sha"],
                "projects": projects,
            }
            headers = {
                jobs.HDR_REPLY_TO: jobs.inbox_subject(self.names, self.run_id, job_id),
                jobs.HDR_JOB_ID: job_id,
                jobs.HDR_JOB_TYPE: "release",
            }
            fut = self._waiter(job_id)
            # Queued with the decision: the relay publishes it (Nats-Msg-Id = job id) even if
            # this replica dies right after the commit.
            await add_message(conn, "pipeline", job_id, f"pipeline.releases.{self.run_id}", _encode(payload), headers)
            await xstore.release_lease(conn, self.d.owner, self.run_id)
        if self.rt.relay is not None:
            self.rt.relay.wake()
        log.info("dispatcher.release_queued", run_id=self.run_id, projects=[p["project"] for p in projects])
        try:
            raw = await asyncio.wait_for(fut, self.d.jobs.timeout("release"))
        except TimeoutError:
            log.warning("dispatcher.release_timeout", run_id=self.run_id)
            return
        reply = await self._reply(raw)
        log_fn = log.info if reply.status == "success" else log.warning
        log_fn(
            "dispatcher.release_done", run_id=self.run_id, status=reply.status, error=reply.error, result=reply.result
        )


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s"


async def _apply_log_lifecycle(runtime: Runtime) -> None:
    """Expire run logs (and results) after 7/30/90 days by ``FORGE_ENVIRONMENT``; best effort."""
    days = _RETENTION_DAYS.get(runtime.settings.environment, 7)
    rule = {
        "ID": "forge-pipeline-run-logs",
        "Filter": {"Prefix": "pipeline-runs/"},
        "Status": "Enabled",
        "Expiration": {"Days": days},
    }
    try:
        await runtime.s3.ensure_bucket()
        async with runtime.s3.client() as client:
            await client.put_bucket_lifecycle_configuration(
                Bucket=runtime.s3.bucket, LifecycleConfiguration={"Rules": [rule]}
            )
        log.info("dispatcher.log_lifecycle", bucket=runtime.s3.bucket, days=days)
    except Exception as exc:  # noqa: BLE001 - storage without lifecycle support keeps logs
        log.warning("dispatcher.log_lifecycle_failed", error=str(exc))


async def start(runtime: Runtime) -> None:
    """``on_startup`` hook of the pipeline service."""
    await _apply_log_lifecycle(runtime)
    if not getattr(runtime.settings, "dispatcher_enabled", True):
        log.info("dispatcher.disabled")
        return
    dispatcher = Dispatcher(runtime, load(DispatcherSettings), load(JobSettings))
    await dispatcher.start()
    runtime.extras["dispatcher"] = dispatcher


async def stop(runtime: Runtime) -> None:
    dispatcher = runtime.extras.pop("dispatcher", None)
    if isinstance(dispatcher, Dispatcher):
        await dispatcher.stop()
