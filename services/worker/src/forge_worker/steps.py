"""Running one step: ``bash -e`` in its own process group, its output streamed to S3.

The log object at ``pipeline-runs/{run}/logs/{phase}/{project}/{step}.log`` grows every
``flush_interval`` while the step runs and is complete once the step ends; the worker holds
only what S3 does not have yet (``logs.LogObject``: bounded memory, retried uploads). Timeouts and cancellation signal the whole process group
(SIGTERM, then SIGKILL after a grace period); the group is also killed after a normal exit so a
step never leaves background processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
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

__all__ = ["LogUploadFailed", "ProcessTable", "StepOutcome", "StepRunner", "log_key"]

log = structlog.get_logger(__name__)


def log_key(run_id: str, phase: str, project: str, step: str) -> str:
    return f"pipeline-runs/{run_id}/logs/{phase}/{project}/{step}.log"


class LogUploadFailed(Exception):
    """S3 did not take a step's log within the retry budget: the job is retried (redelivered),
    which runs the step again, rather than a run finishing with its log missing."""


class StepOutcome(msgspec.Struct, kw_only=True):
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False
    duration: float = 0.0
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


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class StepRunner:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        table: ProcessTable,
        flush_interval: float,
        kill_grace: float,
        max_bytes: int,
        upload_retry_for: float = 300.0,
        part_size: int = 8 * 1024 * 1024,
    ) -> None:
        self.s3 = s3  # a long-lived aiobotocore client
        self.bucket = bucket
        self.table = table
        self.flush_interval = flush_interval
        self.kill_grace = kill_grace
        self.max_bytes = max_bytes
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
        """A whole (small) log at once, retried like a step's."""
        log_object = self.log_object(key)
        await log_object.write(body)
        await log_object.flush(retry=True)

    # Over 60 lines on purpose: the reader, the periodic flush and the timeout/cancel watch are
    # closures over one process and its buffer; split apart they would pass all of it around.
    async def run(
        self,
        *,
        run_id: str,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        timeout: float | None,
        key: str,
        cancel: asyncio.Event,
    ) -> StepOutcome:
        started = time.monotonic()
        output = self.log_object(key)
        state = {"truncated": False, "broken": False}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        pgid = proc.pid
        self.table.add(run_id, pgid, cancel)
        STEPS_RUNNING.inc()
        assert proc.stdout is not None
        stdout = proc.stdout

        async def read() -> None:
            while True:
                chunk = await stdout.read(65536)
                if not chunk:
                    return
                if state["broken"]:
                    continue  # keep draining the pipe so the step is not blocked
                if output.total + len(chunk) > self.max_bytes:
                    if not state["truncated"]:
                        await write(b"\n[forge: log truncated at %d bytes]\n" % self.max_bytes)
                        state["truncated"] = True
                    continue
                await write(chunk)

        async def write(data: bytes) -> None:
            try:
                await output.write(data)  # waits while S3 takes a full part: back-pressure
            except Exception as exc:  # noqa: BLE001 - the step's outcome still counts; see below
                state["broken"] = True
                log.error("steps.log_upload_failed", key=key, error=str(exc))

        async def flush_periodically() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(self.flush_interval)
                if not output.flush_due(time.monotonic() - last, self.flush_interval) or state["broken"]:
                    continue
                last = time.monotonic()
                try:
                    await output.flush()
                except Exception as exc:  # noqa: BLE001 - the final flush retries until S3 is back
                    log.warning("steps.log_flush_failed", key=key, error=str(exc))

        reader = asyncio.create_task(read())
        flusher = asyncio.create_task(flush_periodically())
        waiter = asyncio.create_task(proc.wait())
        canceller = asyncio.create_task(cancel.wait())
        timed_out = cancelled = False
        try:
            done, _ = await asyncio.wait({waiter, canceller}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                if canceller in done:
                    cancelled = True
                    note = b"\n[forge: step cancelled]\n"
                else:
                    timed_out = True
                    note = b"\n[forge: step timed out after %ds]\n" % int(timeout or 0)
                await write(note)
                _kill_group(pgid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), self.kill_grace)
            # Whatever is left of the group (background jobs, a process ignoring SIGTERM) goes.
            _kill_group(pgid, signal.SIGKILL)
            await waiter
            try:
                await asyncio.wait_for(reader, 2.0)
            except TimeoutError:
                reader.cancel()
        finally:
            canceller.cancel()
            flusher.cancel()
            if not waiter.done():
                _kill_group(pgid, signal.SIGKILL)
            self.table.remove(run_id, pgid)
            STEPS_RUNNING.dec()
        uploaded = time.monotonic()
        # A step that printed nothing has no log object (and so no logs_url): one S3 write
        # (client and server CPU) less per silent step.
        has_log = output.total > 0
        if state["broken"]:
            await output.abort()
            raise LogUploadFailed(f"the log of this step could not be written to S3 ({key})")
        if has_log:
            try:
                await output.flush(retry=True)
            except Exception as exc:
                await output.abort()
                raise LogUploadFailed(f"the log of this step could not be written to S3 ({key}): {exc}") from exc
        upload_ms = (time.monotonic() - uploaded) * 1000
        code = proc.returncode if proc.returncode is not None else -9
        if code < 0:
            code = 128 - code
        if timed_out:
            code = 124
        return StepOutcome(
            exit_code=code,
            timed_out=timed_out,
            cancelled=cancelled,
            duration=time.monotonic() - started,
            log_bytes=output.total,
            upload_ms=upload_ms,
            has_log=has_log,
        )
