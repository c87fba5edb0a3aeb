"""Running one step: ``bash -e`` in the step sandbox (``sandbox``), its output streamed to S3.

The log object at ``pipeline-runs/{run}/logs/{phase}/{project}/{step}.log`` is written as the
step prints (``logs.LogObject``: parts go to S3 as they fill, the worker holds about one part),
brought up to date every ``flush_interval`` while the step runs (so it is visible and growing)
and complete at the end; writes S3 refuses are retried with back-off, so a log completes once
S3 is back. Timeouts, limits and cancellation end the whole sandbox (see
``sandbox.run_sandboxed``); it also ends with the step's first process, so a step never leaves
background processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog

from .health import STEPS_RUNNING
from .logs import LogObject
from .sandbox import Limits, Sandbox, Workspace, run_sandboxed

__all__ = ["LogUploadFailed", "ProcessTable", "StepOutcome", "StepRunner", "log_key"]

log = structlog.get_logger(__name__)


def log_key(run_id: str, phase: str, project: str, step: str) -> str:
    return f"pipeline-runs/{run_id}/logs/{phase}/{project}/{step}.log"


class StepOutcome(msgspec.Struct, kw_only=True):
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False
    # "timeout", "memory" or "processes": the limit that ended the step
    limit: str | None = None
    duration: float = 0.0
    # The wall-clock time the step's process ended (before its log's final upload).
    ended_at: dt.datetime | None = None
    log_bytes: int = 0
    upload_ms: float = 0.0
    has_log: bool = True


class ProcessTable:
    """Process groups of running steps, by run, recorded for crash clean-up.

    A worker killed with SIGKILL cannot kill its steps; the next worker to start (or to get
    one of its jobs redelivered) kills groups recorded by worker processes that no longer exist.
    Each worker process appends ``+<pgid> <run id>`` / ``-<pgid>`` lines to its own journal
    ``<pid>.log`` (one ``write`` per step start or end, no file created or deleted per step:
    a create + unlink per step blocked the event loop on the file system's journal under
    load), truncated whenever no step runs. A journal whose owner is dead lists the groups to
    kill: those added and not removed. ``<pid>-<pgid>`` files (one per group, the earlier
    format) are still reaped.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.by_run: dict[str, dict[int, asyncio.Event]] = {}
        self._fd: int | None = None
        self._pid = -1
        self._running = 0

    def _journal(self) -> int | None:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            path = self.dir / f"{pid}.log"
            if path.exists():
                # Left by a dead process whose pid this one reuses.
                self._reap_journal(path)
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError:
                return None
            self._pid = pid
        return self._fd

    def _append(self, line: str) -> None:
        fd = self._journal()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, line.encode())

    def add(self, run_id: str, pgid: int, cancel: asyncio.Event) -> None:
        self.by_run.setdefault(run_id, {})[pgid] = cancel
        self._running += 1
        self._append(f"+{pgid} {run_id}\n")

    def remove(self, run_id: str, pgid: int) -> None:
        groups = self.by_run.get(run_id)
        if groups is not None and groups.pop(pgid, None) is not None:
            self._running -= 1
            if not groups:
                self.by_run.pop(run_id, None)
        self._append(f"-{pgid}\n")
        if self._running <= 0 and self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)

    def cancel_run(self, run_id: str) -> int:
        groups = self.by_run.get(run_id, {})
        for event in groups.values():
            event.set()
        return len(groups)

    def reap_orphans(self) -> int:
        """Kill process groups left by dead worker processes sharing this state directory."""
        killed = 0
        for entry in list(self.dir.iterdir()):
            if entry.suffix == ".log":
                owner_text, groups = entry.stem, None
            else:
                owner_text, _, pgid_text = entry.name.partition("-")
                try:
                    groups = [int(pgid_text)]
                except ValueError:
                    continue
            try:
                owner_pid = int(owner_text)
            except ValueError:
                continue
            if owner_pid == os.getpid() or _alive(owner_pid):
                continue
            if groups is None:
                killed += self._reap_journal(entry)
                continue
            for pgid in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                    killed += 1
            with contextlib.suppress(OSError):
                entry.unlink()
        if killed:
            log.warning("steps.reaped_orphans", groups=killed)
        return killed

    @staticmethod
    def _reap_journal(path: Path) -> int:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return 0
        live: set[int] = set()
        for line in lines:
            with contextlib.suppress(ValueError):
                if line.startswith("+"):
                    live.add(int(line[1:].split(" ", 1)[0]))
                elif line.startswith("-"):
                    live.discard(int(line[1:]))
        killed = 0
        for pgid in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed += 1
        with contextlib.suppress(OSError):
            path.unlink()
        return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (or a recycled pid) still answers; check it is not a zombie.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


class LogUploadFailed(Exception):
    """A step's log could not be written to S3 within ``FORGE_LOG_UPLOAD_RETRY_FOR``: an
    infrastructure failure (the job is given back and runs again), not the step's."""


class _StepLog:
    """What the sandbox prints, on its way into the step's :class:`LogObject`: capped at
    ``max_bytes`` (the limit notes still go in), written as it comes (``write`` waits while S3
    takes a full part, so the step waits on its pipe: memory stays bounded), flushed every
    ``flush_interval`` so the object grows while the step runs. After a write S3 refused for
    ``retry_for`` the log is broken: the rest is drained and dropped, the step still ends."""

    def __init__(self, output: LogObject, key: str, max_bytes: int, flush_interval: float) -> None:
        self.output = output
        self.key = key
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.truncated = False
        self.error: str | None = None

    async def sink(self, chunk: bytes) -> None:
        if self.error is not None:
            return  # keep draining the pipe so the step is not blocked
        if self.output.total + len(chunk) > self.max_bytes:
            if not self.truncated:
                self.truncated = True
                await self._write(b"\n[forge: log truncated at %d bytes]\n" % self.max_bytes)
            if not chunk.startswith(b"\n[forge: "):
                return
        await self._write(chunk)

    async def _write(self, data: bytes) -> None:
        try:
            await self.output.write(data)
        except Exception as exc:  # noqa: BLE001 - the step runs on; the job is retried at its end
            self.error = str(exc) or type(exc).__name__
            log.error("steps.log_upload_failed", key=self.key, error=self.error)

    async def flush_periodically(self, stop: asyncio.Event) -> None:
        """Flush every ``flush_interval`` (spaced out for large logs) until ``stop`` is set.
        Never cancelled mid-flush: a multipart upload completed in S3 but not recorded here
        would be written to again."""
        last = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.flush_interval)
            if stop.is_set():
                return
            if self.error is not None or not self.output.flush_due(time.monotonic() - last, self.flush_interval):
                continue
            last = time.monotonic()
            try:
                await self.output.flush()
            except Exception as exc:  # noqa: BLE001 - the final flush retries until S3 is back
                log.warning("steps.log_flush_failed", key=self.key, error=str(exc))

    async def finish(self) -> None:
        """Make the object hold everything written (retried); :class:`LogUploadFailed` if not."""
        if self.error is None:
            try:
                await self.output.flush(retry=True)
            except Exception as exc:  # noqa: BLE001 - reported as LogUploadFailed below
                self.error = str(exc) or type(exc).__name__
        if self.error is not None:
            with contextlib.suppress(Exception):
                await self.output.abort()
            raise LogUploadFailed(f"the log of this step could not be written to S3 ({self.key}): {self.error}")


class StepRunner:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        table: ProcessTable,
        flush_interval: float,
        max_bytes: int,
        sandbox: Sandbox,
        *,
        upload_retry_for: float = 300.0,
        part_size: int = 8 * 1024 * 1024,
    ) -> None:
        self.s3 = s3  # a long-lived aiobotocore client
        self.bucket = bucket
        self.table = table
        self.flush_interval = flush_interval
        self.max_bytes = max_bytes
        self.sandbox = sandbox
        self.upload_retry_for = upload_retry_for
        self.part_size = part_size

    @staticmethod
    def argv(action: str, command: str) -> list[str] | None:
        if action == "shell":
            return ["bash", "-e", "-c", command]
        earthly = shutil.which("earthly")
        if earthly is None:
            return None
        return [earthly, *command.split()]

    def log_object(self, key: str) -> LogObject:
        return LogObject(self.s3, self.bucket, key, part_size=self.part_size, retry_for=self.upload_retry_for)

    async def upload(self, key: str, body: bytes) -> None:
        """A whole (small) log at once, retried like a step's (``FORGE_LOG_UPLOAD_RETRY_FOR``)."""
        log_object = self.log_object(key)
        await log_object.write(body)
        await log_object.flush(retry=True)

    async def run(
        self,
        *,
        run_id: str,
        argv: list[str],
        workspace: Workspace,
        cwd: str,
        env: dict[str, str],
        limits: Limits,
        key: str,
        cancel: asyncio.Event,
    ) -> StepOutcome:
        """Run one step in the sandbox, its log written to S3 as it prints (bounded memory) and
        growing there while it runs; :class:`LogUploadFailed` when S3 stays unreachable."""
        step_log = _StepLog(self.log_object(key), key, self.max_bytes, self.flush_interval)
        stop_flushing = asyncio.Event()
        flusher = asyncio.create_task(step_log.flush_periodically(stop_flushing))
        STEPS_RUNNING.inc()
        try:
            outcome = await run_sandboxed(
                self.sandbox,
                argv,
                workspace,
                cwd,
                env,
                limits,
                step_log.sink,
                cancel=cancel,
                on_start=lambda pgid: self.table.add(run_id, pgid, cancel),
                on_end=lambda pgid: self.table.remove(run_id, pgid),
            )
        except BaseException:
            flusher.cancel()
            raise
        finally:
            STEPS_RUNNING.dec()
        ended_at = dt.datetime.now(dt.UTC)
        stop_flushing.set()
        await flusher  # a flush under way ends first (bounded by the S3 client's timeouts)
        uploaded = time.monotonic()
        # A step that printed nothing has no log object (and so no logs_url): one S3 write
        # (client and server CPU) less per silent step.
        has_log = step_log.output.total > 0
        if has_log or step_log.error is not None:
            await step_log.finish()
        return StepOutcome(
            exit_code=outcome.exit_code,
            timed_out=outcome.timed_out,
            cancelled=outcome.cancelled,
            limit=outcome.limit,
            duration=outcome.duration,
            log_bytes=step_log.output.total,
            upload_ms=(time.monotonic() - uploaded) * 1000,
            has_log=has_log,
            ended_at=ended_at,
        )
