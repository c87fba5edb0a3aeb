"""The service's S3 client (forge_common.s3): once open, every ``client()`` block borrows the one
long-lived client (no client made per request) and leaving a block does not close it."""

from __future__ import annotations

import uuid

from forge_common.s3 import S3
from forge_dev.testing import Platform


async def test_the_shared_client_outlives_each_block(platform: Platform) -> None:
    s3 = S3(platform.s3_url, platform.s3_bucket, "forge", "forge-secret", "us-east-1")
    key = f"test-s3-client/{uuid.uuid4().hex}"
    await s3.open()
    try:
        async with s3.client() as first:
            await first.put_object(Bucket=s3.bucket, Key=key, Body=b"one")
        async with s3.client() as second:
            assert second is first
            got = await second.get_object(Bucket=s3.bucket, Key=key)
            assert await got["Body"].read() == b"one"
    finally:
        await s3.close()
    # Closed: each block has a client of its own again, and it still works.
    async with s3.client() as own:
        assert own is not first
        await own.delete_object(Bucket=s3.bucket, Key=key)
