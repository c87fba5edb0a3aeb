"""Result routing on both sides of 1 MB, against the platform's S3."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from forge_common.results import INLINE_LIMIT, encode_result, resolve_result, result_key
from forge_common.s3 import S3
from forge_dev.testing import Platform

ENVELOPE = len(msgspec.json.encode({"log": ""}))  # bytes of JSON around the string


@pytest.fixture
def s3(platform: Platform) -> S3:
    return S3(platform.s3_url, platform.s3_bucket, "forge", "forge-secret", "us-east-1")


async def stored_size(s3: S3, key: str) -> int | None:
    async with s3.client() as client:
        try:
            head = await client.head_object(Bucket=s3.bucket, Key=key)
        except client.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])


async def test_result_just_under_1_mb_travels_inline(s3: S3) -> None:
    run_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    result = {"log": "x" * (INLINE_LIMIT - 1 - ENVELOPE)}
    payload = await encode_result(s3, run_id, "ci", job_id, result)
    assert len(payload) == INLINE_LIMIT - 1
    assert payload == msgspec.json.encode(result)
    assert await stored_size(s3, result_key(run_id, "ci", job_id)) is None
    assert await resolve_result(s3, payload) == result


async def test_result_of_1_mb_and_more_goes_to_s3_by_reference(s3: S3) -> None:
    run_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    for size in (INLINE_LIMIT, 3 * INLINE_LIMIT):
        result = {"log": "y" * (size - ENVELOPE)}
        payload = await encode_result(s3, run_id, "discovery", job_id, result)
        assert len(payload) < 1024  # the reply carries only the reference
        ref = msgspec.json.decode(payload)["$result_ref"]
        key = f"pipeline-runs/{run_id}/results/discovery/{job_id}.json"  # the spec's key
        assert ref == {"bucket": s3.bucket, "key": key, "size": size}
        assert await stored_size(s3, key) == size
        assert await resolve_result(s3, payload) == result  # transparent for the receiver


async def test_small_and_structured_results_round_trip(s3: S3) -> None:
    result = {"phases": [{"name": "test", "tasks": [{"project": "api", "steps": ["unit"]}]}], "ok": True}
    payload = await encode_result(s3, str(uuid.uuid4()), "discovery", str(uuid.uuid4()), result)
    assert await resolve_result(s3, payload) == result
