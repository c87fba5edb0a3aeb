"""Jobs JetStream gave up on: dead-letter them and fail what waited for them."""

from __future__ import annotations

import contextlib

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from forge_common import jobs
from forge_common.jobs import JobSettings
from forge_common.runtime import Runtime
from forge_pipeline import service

__all__ = ["DeadLetters"]

log = structlog.get_logger(__name__)


class DeadLetters:
    def __init__(self, runtime: Runtime, job_settings: JobSettings) -> None:
        self.runtime = runtime
        self.job_settings = job_settings
        self.names = runtime.names

    async def on_max_deliveries(self, msg: Msg) -> None:
        """A job exhausted its deliveries without an answer: dead-letter it and fail its task."""
        try:
            advisory = msgspec.json.decode(msg.data)
            await self._dead_letter(
                int(advisory["stream_seq"]), int(advisory.get("deliveries", self.job_settings.job_max_deliver))
            )
        except Exception as exc:  # noqa: BLE001 - a callback must not raise into nats-py
            log.error("dispatcher.dead_letter_failed", error=str(exc))

    async def _dead_letter(self, seq: int, deliveries: int) -> None:
        js = self.runtime.js
        stream = self.names.stream(jobs.JOBS_STREAM)
        try:
            raw = await js.get_msg(stream, seq)
        except NotFoundError:
            return  # already handled (the worker dead-lettered it itself) or purged
        headers = jobs.decode_headers(raw.headers)
        subject = raw.subject or ""
        job_type = jobs.job_type_of(self.names, subject) or "ci"
        ref = msgspec.json.decode(raw.data or b"{}", type=jobs.JobRef)
        run_id = ref.run_id
        reason = (
            f"job was not acknowledged after {deliveries} deliveries "
            "(the worker crashed or exceeded the ack wait each time)"
        )
        await jobs.dead_letter(
            js,
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
            await js.delete_msg(stream, seq)
        if job_type == "ci" and ref.task_id:
            with contextlib.suppress(Exception):
                async with self.runtime.pool.connection() as conn, conn.transaction():
                    await service.mark_task(conn, ref.task_id, "failed", f"dead-lettered: {reason}")
        reply_to = headers.get(jobs.HDR_REPLY_TO)
        if reply_to:
            reply = jobs.JobReply(
                status="failed",
                error=f"dead-lettered: {reason}",
                result=jobs.DeadLettered(),
                job_id=ref.job_id or None,
                attempt=ref.attempt or None,
            )
            await jobs.publish_reply(self.runtime.nc, reply_to, msgspec.json.encode(reply))
        log.warning("dispatcher.dead_lettered", run_id=run_id, job_type=job_type, seq=seq)
