"""Expiry of run logs and results in object storage."""

from __future__ import annotations

import structlog

from forge_common.runtime import Runtime

__all__ = ["apply_log_lifecycle"]

log = structlog.get_logger(__name__)

_RETENTION_DAYS = {"dev": 7, "staging": 30, "production": 90}


async def apply_log_lifecycle(runtime: Runtime) -> None:
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
