"""A step's log is written to S3 as the step runs, with the worker holding at most one part of
it in memory, whatever the step prints; the object grows while the step runs and is complete
at the end. Against the session's S3 server (moto speaks the S3 protocol, multipart included)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from forge_common.s3 import S3
from forge_dev.testing import Platform
from forge_worker.logs import MIN_PART, LogObject

CHUNK = 64 * 1024


@pytest.fixture
async def s3_client(platform: Platform) -> AsyncIterator[Any]:
    s3 = S3(platform.s3_url, platform.s3_bucket, "forge", "forge-secret", "us-east-1")
    await s3.ensure_bucket()
    async with s3.client() as client:
        yield client


async def _object(client: Any, bucket: str, key: str) -> bytes:
    got = await client.get_object(Bucket=bucket, Key=key)
    async with got["Body"] as body:
        data: bytes = await body.read()
    return data


def _line_chunk(index: int) -> bytes:
    line = f"line {index:08d} " + "x" * 50 + "\n"
    return (line.encode() * (CHUNK // len(line) + 1))[:CHUNK]


async def test_a_40_mib_log_grows_in_s3_with_bounded_memory(platform: Platform, s3_client: Any) -> None:
    key = f"pipeline-runs/{uuid.uuid4()}/logs/build/app/loud.log"
    log = LogObject(s3_client, platform.s3_bucket, key, part_size=MIN_PART, retry_for=30)
    digest = hashlib.sha256()
    sizes = []
    for i in range(40 * 1024 * 1024 // CHUNK):
        chunk = _line_chunk(i)
        digest.update(chunk)
        await log.write(chunk)
        if i % 97 == 0:
            # A periodic flush: everything written so far is in S3 now.
            await log.flush()
            head = await s3_client.head_object(Bucket=platform.s3_bucket, Key=key)
            sizes.append(int(head["ContentLength"]))
            assert sizes[-1] == log.total
    await log.flush(retry=True)

    assert log.peak_buffered <= MIN_PART + CHUNK  # never the whole 40 MiB
    assert sizes == sorted(sizes)
    assert sizes[-1] > 30 * 1024 * 1024
    data = await _object(s3_client, platform.s3_bucket, key)
    assert len(data) == 40 * 1024 * 1024
    assert hashlib.sha256(data).hexdigest() == digest.hexdigest()


async def test_a_small_log_is_one_object_rewritten(platform: Platform, s3_client: Any) -> None:
    key = f"pipeline-runs/{uuid.uuid4()}/logs/test/app/quiet.log"
    log = LogObject(s3_client, platform.s3_bucket, key)
    await log.write(b"hello\n")
    await log.flush()
    assert await _object(s3_client, platform.s3_bucket, key) == b"hello\n"
    await log.write(b"world\n")
    assert log.dirty
    await log.flush(retry=True)
    assert await _object(s3_client, platform.s3_bucket, key) == b"hello\nworld\n"
    assert not log.dirty
