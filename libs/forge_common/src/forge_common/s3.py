"""S3 access through aioboto3, pointed at any S3-compatible endpoint.

A service's runtime opens one long-lived client (:meth:`S3.open`) that :meth:`S3.client` then
lends out: making a client loads botocore's service model and a connection pool, tens of
milliseconds of CPU, which a request reading one object must not pay (issue 11: the log of every
step that printed something was indexed through a new client). Without :meth:`S3.open` (tools,
tests) each :meth:`S3.client` is a client of its own, closed on leaving.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

import aioboto3
from botocore.config import Config

__all__ = ["S3"]


class S3:
    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str,
        session_token: str = "",
    ) -> None:
        self.endpoint_url = endpoint_url or None
        self.bucket = bucket
        self._shared: Any = None
        self._shared_context: AbstractAsyncContextManager[Any] | None = None
        self._session = aioboto3.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token or None,
            region_name=region,
        )
        self._config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # The shared client's connections (botocore's default is 10): log follows, reads and
            # indexing of one busy service at once.
            max_pool_connections=50,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> S3:
        return cls(
            settings.s3_url,
            settings.s3_bucket,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_region,
            getattr(settings, "s3_session_token", ""),
        )

    def client(self) -> AbstractAsyncContextManager[Any]:
        """A client for an ``async with`` block: the shared one when open (left open on leaving;
        aiobotocore clients serve concurrent calls), else a new one."""
        if self._shared is not None:
            return contextlib.nullcontext(self._shared)
        client: AbstractAsyncContextManager[Any] = self._session.client(
            "s3", endpoint_url=self.endpoint_url, config=self._config
        )
        return client

    async def open(self) -> None:
        """Make the shared client (no request is sent: an unreachable S3 does not stop a start)."""
        if self._shared is None:
            context = self._session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
            self._shared = await context.__aenter__()
            self._shared_context = context

    async def close(self) -> None:
        context, self._shared, self._shared_context = self._shared_context, None, None
        if context is not None:
            await context.__aexit__(None, None, None)

    async def ensure_bucket(self) -> None:
        async with self.client() as s3:
            try:
                await s3.head_bucket(Bucket=self.bucket)
            except Exception:  # noqa: BLE001 - any miss means create it
                with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                    await s3.create_bucket(Bucket=self.bucket)
