"""A step's log object, written while the step runs, with bounded memory.

The log lives at one key (``pipeline-runs/{run}/logs/{phase}/{project}/{step}.log``), visible
and growing while the step runs. Memory stays bounded whatever the step prints (up to
``FORGE_LOG_MAX_BYTES``): the worker keeps only what S3 does not have yet.

* While the object is under 5 MiB (S3's smallest non-final multipart part) its content is kept
  and the whole object is rewritten on each flush: one small PUT.
* Beyond that, output goes to S3 as multipart parts of ``part_size`` as soon as that much is
  buffered (the step's pipe waits meanwhile: back-pressure, not memory), and each flush
  completes the upload: part 1 is a server-side copy of the object as it was (UploadPartCopy),
  then the new parts. The object is never re-sent by the worker; the server copies it at most
  once per flush, and flushes of a large log are spaced out (every ``flush_interval`` per
  16 MiB already written).

S3 being down does not lose output: what is not in S3 yet stays buffered (the step pauses
once a part's worth is waiting), every write is retried with exponential back-off for
``retry_for``, and the last flush at the step's end completes the object once S3 answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

__all__ = ["MIN_PART", "LogLost", "LogObject"]

log = structlog.get_logger(__name__)

MIN_PART = 5 * 1024 * 1024
_SPACING = 16 * 1024 * 1024
_CONTENT_TYPE = "text/plain; charset=utf-8"


class LogLost(Exception):
    """Output already handed to S3 in an upload S3 no longer has: the log cannot be completed."""


class LogObject:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        *,
        part_size: int = 8 * 1024 * 1024,
        retry_for: float = 300.0,
        retry_max_wait: float = 5.0,
    ) -> None:
        self.s3 = s3  # a long-lived aiobotocore client
        self.bucket = bucket
        self.key = key
        self.part_size = max(part_size, MIN_PART)
        self.retry_for = retry_for
        self.retry_max_wait = retry_max_wait
        self.size = 0  # bytes in the object as S3 serves it now
        self.total = 0  # bytes written so far
        self._small = bytearray()  # the object's content while it is under MIN_PART
        self._pending = bytearray()  # written, not in S3 yet (after the object and open parts)
        self._part: bytes | None = None  # the next part of the open upload, taken from the buffers
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_parts = 0  # bytes in the open upload's parts (the copied object included)
        self._lock = asyncio.Lock()
        self.peak_buffered = 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory (the bound the tests check)."""
        return len(self._small) + len(self._pending) + len(self._part or b"")

    @property
    def dirty(self) -> bool:
        return self.size != self.total

    def flush_due(self, since_last: float, interval: float) -> bool:
        """Whether a periodic flush is due ``since_last`` seconds after the previous one."""
        return self.dirty and since_last >= interval * max(1, self.size // _SPACING)

    async def write(self, data: bytes) -> None:
        """Buffer ``data``; once a part's worth is waiting beyond 5 MiB, send it (retried)."""
        self._pending.extend(data)
        self.total += len(data)
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        if self.buffered >= self.part_size:
            async with self._lock:
                await self._retrying(self._spill)

    async def flush(self, *, retry: bool = False) -> None:
        """Make S3 serve everything written so far (``retry``: keep trying for ``retry_for``)."""
        async with self._lock:
            if not self.dirty:
                return
            if retry:
                await self._retrying(self._publish)
            else:
                await self._publish()

    async def _retrying(self, operation: Any) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_not_exception_type(LogLost),
            wait=wait_exponential_jitter(multiplier=0.2, max=self.retry_max_wait),
            stop=stop_after_delay(self.retry_for),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await operation()

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "steps.log_upload_retry",
            key=self.key,
            attempt=state.attempt_number,
            error=f"{type(error).__name__}: {error}" if error is not None else None,
        )

    # --- the two S3 moves ------------------------------------------------------------------------

    async def _spill(self) -> None:
        """Send whole parts of what is buffered into the open upload (opening it if needed)."""
        await self._open()
        while self._part is not None or len(self._small) + len(self._pending) >= self.part_size:
            if self._part is None:
                self._part = self._take(self.part_size)
            await self._upload_part(self._part)
            self._part = None

    async def _publish(self) -> None:
        if (
            self._upload_id is None
            and self._part is None
            and self.size + len(self._pending) < MIN_PART + self.part_size
            and self.size < MIN_PART
        ):
            # Small: rewrite the whole object from memory.
            written = len(self._pending)
            with memoryview(self._pending) as view:
                content = b"".join((self._small, view))
            await self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=content, ContentType=_CONTENT_TYPE)
            del self._pending[:written]  # (more may have been written meanwhile)
            self.size = len(content)
            self._small = bytearray(content) if len(content) < MIN_PART else bytearray()
            return
        await self._open()
        if self._part is None and (self._small or self._pending):
            self._part = self._take(len(self._small) + len(self._pending))
        if self._part is not None:
            await self._upload_part(self._part)
            self._part = None
        await self._complete()

    def _take(self, size: int) -> bytes:
        """The next ``size`` bytes of the upload's parts (the small object's content first), out of
        the buffers: one copy, held as the part until S3 has it (retries send it again)."""
        count = min(size - len(self._small), len(self._pending))
        with memoryview(self._pending) as view, view[:count] as head:
            part = b"".join((self._small, head))
        del self._pending[:count]
        self._small = bytearray()
        return part

    async def _open(self) -> None:
        if self._upload_id is not None:
            return
        created = await self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key, ContentType=_CONTENT_TYPE)
        upload_id = str(created["UploadId"])
        parts: list[dict[str, Any]] = []
        if self.size >= MIN_PART:
            # The object so far becomes part 1, copied inside S3.
            try:
                copied = await self.s3.upload_part_copy(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    PartNumber=1,
                    CopySource={"Bucket": self.bucket, "Key": self.key},
                )
            except Exception:
                await self._abort(upload_id)
                raise
            parts.append({"PartNumber": 1, "ETag": copied["CopyPartResult"]["ETag"]})
        self._upload_id, self._parts = upload_id, parts
        self._in_parts = self.size if parts else 0

    async def _upload_part(self, chunk: bytes) -> None:
        number = len(self._parts) + 1
        try:
            sent = await self.s3.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=chunk
            )
        except Exception as exc:
            if not _no_such_upload(exc):
                raise
            # Gone: completed by an attempt whose answer was lost (then start the next upload
            # from the object), or aborted (then what its parts held is lost).
            await self._completed_before(exc)
            raise
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self._in_parts += len(chunk)

    async def _complete(self) -> None:
        expected = self._in_parts
        try:
            await self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        except Exception as exc:
            if not _no_such_upload(exc):
                raise
            await self._completed_before(exc)
            return
        self._completed(expected)

    def _completed(self, size: int) -> None:
        self.size = size
        self._upload_id = None
        self._parts = []
        self._in_parts = 0

    async def _completed_before(self, exc: Exception) -> None:
        """The open upload is unknown to S3: fine if an earlier complete of it went through (the
        object has exactly its parts' bytes; the caller's retry goes on from there)."""
        head = await self.s3.head_object(Bucket=self.bucket, Key=self.key)
        if int(head["ContentLength"]) != self._in_parts:
            raise LogLost(f"S3 lost the multipart upload of {self.key} (aborted?)") from exc
        self._completed(self._in_parts)

    async def abort(self) -> None:
        """Drop an open upload's parts (the object keeps what it served)."""
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            await self._abort(upload_id)

    async def _abort(self, upload_id: str) -> None:
        try:
            await self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - a lifecycle rule on the bucket removes it anyway
            log.warning("steps.log_abort_failed", key=self.key, error=str(exc))


def _no_such_upload(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code == "NoSuchUpload"
