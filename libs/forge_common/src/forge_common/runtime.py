"""What a running service holds: pool, NATS, S3, token verifier, outbox relay."""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from . import github
from .auth import JwksCache, TokenVerifier
from .db import Pool, create_pool, migrate
from .nats import Names, connect, ensure_stream, events_stream_config
from .nats_auth import connect_options
from .outbox import OutboxRelay
from .s3 import S3
from .settings import CommonSettings

__all__ = ["Runtime"]

log = structlog.get_logger(__name__)


class Runtime:
    """Started in the app's lifespan; the only owner of the service's connections."""

    def __init__(self, service: str, settings: CommonSettings, schema: str | None, migrations: str | None) -> None:
        self.service = service
        self.settings = settings
        self.schema = schema
        self.migrations = migrations
        self.names = Names(settings.nats_prefix)
        workload = {settings.workload_issuer: JwksCache(settings.workload_keys_url)} if settings.workload_issuer else {}
        self.verifier = TokenVerifier(
            settings.oidc_issuer, settings.oidc_audience, JwksCache(settings.jwks_url), also_trusted=workload
        )
        self.s3 = S3.from_settings(settings)
        self._pool: Pool | None = None
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.relay: OutboxRelay | None = None
        self.extras: dict[str, Any] = {}

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "runtime not started"
        return self._pool

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "runtime not started"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "runtime not started"
        return self._js

    async def start(self) -> None:
        s = self.settings
        await self.s3.open()
        if self.schema and self.migrations:
            if s.migrate_on_start:
                await migrate(s.database_url, self.schema, self.migrations)
            self._pool = await create_pool(
                s.database_url,
                s.db_pool_min,
                s.db_pool_max,
                self.service,
                context={github.REPORTING: bool(s.github_token)},
            )
        self._nc = await connect(
            s.nats_url,
            f"forge-{self.service}",
            **connect_options(self.service, s.nats_user, s.nats_password, s.nats_creds),
        )
        self._js = self._nc.jetstream(timeout=5.0)
        await ensure_stream(self._js, events_stream_config(self.names))
        if self._pool is not None and self.schema:
            self.relay = OutboxRelay(
                self._pool, s.database_url, self.schema, self._js, self.names, retention=s.outbox_retention
            )
            self.relay.start()
        log.info("service.started", host=s.host, port=s.port)

    async def migrate(self) -> list[int]:
        """Apply this service's pending migrations (``forge-<service> migrate``); versions applied."""
        if not (self.schema and self.migrations):
            return []
        return await migrate(self.settings.database_url, self.schema, self.migrations)

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:  # noqa: BLE001 - shutting down anyway
                await self._nc.close()
        if self._pool is not None:
            await self._pool.close()
        await self.s3.close()

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        if self._pool is not None:
            try:
                async with self._pool.connection(timeout=2.0) as conn:
                    await conn.execute("SELECT 1")
                checks["database"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["nats"] = "ok" if self._nc is not None and self._nc.is_connected else "unavailable"
        return checks
