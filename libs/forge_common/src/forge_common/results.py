"""Size-based routing of job results.

Results under 1 MB travel inline in the NATS reply. Larger ones are stored at
``pipeline-runs/{run_id}/results/{job_type}/{job_id}.json`` and the reply carries a reference
``{"$result_ref": {"bucket", "key", "size"}}`` that :func:`resolve_result` fetches back.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .s3 import S3

__all__ = ["INLINE_LIMIT", "encode_result", "is_result_ref", "resolve_result", "result_key"]

INLINE_LIMIT = 1024 * 1024
_REF = "$result_ref"


def result_key(run_id: str, job_type: str, job_id: str) -> str:
    return f"pipeline-runs/{run_id}/results/{job_type}/{job_id}.json"


async def encode_result(
    s3: S3, run_id: str, job_type: str, job_id: str, result: Any, limit: int = INLINE_LIMIT
) -> bytes:
    """``result`` as JSON when it is under ``limit`` bytes, else stored in S3 and a reference
    to it (the Argo executor uses a lower limit: a workflow's parameters live in Kubernetes
    objects, see ``forge_common.jobs.ARGO_INLINE_LIMIT``)."""
    body = msgspec.json.encode(result)
    if len(body) < limit:
        return body
    key = result_key(run_id, job_type, job_id)
    async with s3.client() as client:
        await client.put_object(Bucket=s3.bucket, Key=key, Body=body, ContentType="application/json")
    return msgspec.json.encode({_REF: {"bucket": s3.bucket, "key": key, "size": len(body)}})


def is_result_ref(value: Any) -> bool:
    """True for a decoded payload that is a reference to a result stored in S3."""
    return isinstance(value, dict) and set(value) == {_REF}


async def resolve_result(s3: S3, payload: bytes) -> Any:
    value = msgspec.json.decode(payload)
    if is_result_ref(value):
        ref = value[_REF]
        async with s3.client() as client:
            obj = await client.get_object(Bucket=ref["bucket"], Key=ref["key"])
            async with obj["Body"] as stream:
                body = await stream.read()
        return msgspec.json.decode(body)
    return value
