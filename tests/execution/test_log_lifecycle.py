"""Run logs expire by environment: the pipeline service sets the bucket's lifecycle at start-up."""

from __future__ import annotations

import uuid

from forge_common.s3 import S3
from forge_dev.testing import Platform

from .conftest import Cell


async def _rules(platform: Platform, bucket: str) -> list[dict[str, object]]:
    s3 = S3(platform.s3_url, bucket, "forge", "forge-secret", "us-east-1")
    async with s3.client() as c:
        config = await c.get_bucket_lifecycle_configuration(Bucket=bucket)
    return list(config["Rules"])


async def test_dev_platform_keeps_logs_7_days(cell: Cell) -> None:
    [rule] = await _rules(cell.platform, cell.platform.s3_bucket)
    assert rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": "pipeline-runs/"}
    assert rule["Expiration"] == {"Days": 7}


async def test_staging_keeps_logs_30_days(platform: Platform) -> None:
    bucket = f"forge-lifecycle-{uuid.uuid4().hex[:8]}"
    staging = Cell(
        platform,
        "life",
        env={"FORGE_ENVIRONMENT": "staging", "FORGE_S3_BUCKET": bucket, "FORGE_DISPATCHER_ENABLED": "false"},
    )
    try:
        staging.start_pipeline()
        [rule] = await _rules(platform, bucket)
        assert rule["Expiration"] == {"Days": 30}
    finally:
        staging.close()
        s3 = S3(platform.s3_url, bucket, "forge", "forge-secret", "us-east-1")
        async with s3.client() as c:
            await c.delete_bucket(Bucket=bucket)
