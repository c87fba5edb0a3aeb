"""Test harness: real Postgres, NATS JetStream, S3 protocol and every Forge process.

Uses the servers named by ``FORGE_TEST_DATABASE_URL`` / ``FORGE_TEST_NATS_URL`` /
``FORGE_TEST_S3_URL`` when set, else starts embedded ones. Each session gets a fresh database,
a NATS prefix (streams and subjects) and a bucket of its own, all removed afterwards, so several
suites can share one machine's servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import psycopg
from nats.js.api import ConsumerConfig, DeliverPolicy

from .keys import IssuerKeys
from .stack import Process, Stack, StackConfig, free_port

__all__ = ["Platform", "read_events", "session_platform", "wait_for_event"]


class Platform:
    """The running test platform; what tests talk to."""

    def __init__(self, stack: Stack, tag: str) -> None:
        self.stack = stack
        self.tag = tag

    @property
    def gateway_url(self) -> str:
        return self.stack.gateway_url

    def service_url(self, name: str) -> str:
        return self.stack.service_url(name)

    @property
    def database_url(self) -> str:
        return self.stack.infra.database_url

    @property
    def nats_url(self) -> str:
        """The URL the harness itself uses: the ``admin`` identity on an authenticated server."""
        return self.stack.infra.nats_url_for("admin")

    def nats_url_for(self, identity: str) -> str:
        """The URL of one NATS identity (``events``, ``worker``, ...); the plain URL on a server
        without authentication."""
        return self.stack.infra.nats_url_for(identity)

    @property
    def nats_prefix(self) -> str:
        return self.stack.config.nats_prefix

    @property
    def s3_url(self) -> str:
        return self.stack.infra.s3_url

    @property
    def s3_bucket(self) -> str:
        return self.stack.config.s3_bucket

    @property
    def issuer_url(self) -> str:
        return self.stack.infra.issuer_url

    @property
    def data_dir(self) -> Path:
        return self.stack.config.data_dir

    @property
    def keys(self) -> IssuerKeys:
        assert self.stack.infra.keys is not None
        return self.stack.infra.keys

    def env(self) -> dict[str, str]:
        """The FORGE_* environment the platform's processes run with."""
        return self.stack.base_env()

    def token(self, sub: str, *roles: str, service_account: bool = False, expires_in: int = 3600) -> str:
        return self.keys.sign(
            sub,
            list(roles) or (["worker"] if service_account else ["viewer"]),
            service_account=service_account,
            client_id="forge-worker" if service_account else "forge-cli",
            expires_in=expires_in,
        )

    def headers(self, sub: str, *roles: str, service_account: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, *roles, service_account=service_account)}"}

    def start_process(self, name: str, env: dict[str, str] | None = None, wait: bool = True) -> Process:
        """An extra process (replica, worker, service with other settings) on a free port."""
        port = free_port() if name != "worker" else None
        proc = self.stack.spawn_service(name, port=port, env=env)
        if wait and proc.url:
            from .stack import wait_http

            wait_http(f"{proc.url}/readyz", 60, proc.popen, proc.name)
        return proc

    def logs(self, name: str) -> str:
        for proc in self.stack.infra.processes:
            if proc.name == name and proc.log_path and proc.log_path.exists():
                return proc.log_path.read_text(errors="replace")
        return ""


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a clean-up coroutine from sync code, also when an event loop is already running
    (benchmarks use ``session_platform`` from async code): then it runs on its own thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(make())
        return
    worker = threading.Thread(target=lambda: asyncio.run(make()), name="forge-test-cleanup")
    worker.start()
    worker.join(60)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _delete_streams(url: str, prefix: str) -> None:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        names = await js.streams_info()
        for info in names:
            if info.config.name and info.config.name.startswith(prefix.upper() + "_"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(info.config.name)
    finally:
        await nc.close()


async def _delete_bucket(stack: Stack) -> None:
    from forge_common.s3 import S3

    s3 = S3(stack.infra.s3_url, stack.config.s3_bucket, "forge", "forge-secret", "us-east-1")
    async with s3.client() as client:
        with contextlib.suppress(Exception):
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=s3.bucket):
                for obj in page.get("Contents", []):
                    await client.delete_object(Bucket=s3.bucket, Key=obj["Key"])
            await client.delete_bucket(Bucket=s3.bucket)


@contextlib.contextmanager
def session_platform(
    env: dict[str, str] | None = None, workers: int = 1, secure_nats: bool = False
) -> Iterator[Platform]:
    """The platform of a test session. ``secure_nats``: on a NATS server of its own that refuses
    anonymous connections and gives every process its identity's permissions (as ``make run``
    does), whatever ``FORGE_TEST_NATS_URL`` says; else on the shared (or an embedded) server
    without authentication, where cells may use NATS prefixes of their own."""
    tag = uuid.uuid4().hex[:10]
    data_dir = Path(tempfile.mkdtemp(prefix=f"forge-test-{tag}-"))
    config = StackConfig(
        data_dir=data_dir,
        database_url=os.environ.get("FORGE_TEST_DATABASE_URL") or None,
        database_name=f"forge_test_{tag}",
        nats_url=None if secure_nats else (os.environ.get("FORGE_TEST_NATS_URL") or None),
        nats_prefix=f"t{tag}",
        nats_auth=secure_nats,
        s3_url=os.environ.get("FORGE_TEST_S3_URL") or None,
        s3_bucket=f"forge-test-{tag}",
        gateway_port=free_port(),
        issuer_port=free_port(),
        service_ports={n: free_port() for n in ("pipeline", "release", "deployment", "approval")},
        nats_port=free_port(),
        s3_port=free_port(),
        # Small pools: a session runs many processes against one shared server (max_connections).
        env={"FORGE_LOG_LEVEL": "info", "FORGE_DB_POOL_MAX": "6", **(env or {})},
        log_to_files=True,
        workers=workers,
    )
    stack = Stack(config)
    try:
        try:
            stack.start()
        except BaseException:
            _dump_logs(data_dir)
            raise
        yield Platform(stack, tag)
    finally:
        failed = stack.dead()
        admin = stack.infra.admin_database_url
        nats_url = stack.infra.nats_url
        external_nats = bool(config.nats_url)
        external_s3 = bool(config.s3_url)
        if external_s3 and stack.infra.s3_url:
            with contextlib.suppress(Exception):
                _run_coroutine(lambda: _delete_bucket(stack))
        for proc in list(stack.infra.processes):
            if proc.name not in ("nats", "s3"):
                proc.stop()
        if external_nats and nats_url:
            with contextlib.suppress(Exception):
                _run_coroutine(lambda: _delete_streams(nats_url, config.nats_prefix))
        if admin and config.database_url:
            with contextlib.suppress(Exception):
                _drop_database(admin, config.database_name)
        stack.stop()
        if failed:
            print(f"processes that died during the session: {failed}; logs kept in {data_dir}/logs")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def _dump_logs(data_dir: Path) -> None:
    for path in sorted((data_dir / "logs").glob("*.log")):
        print(f"----- {path.name} -----")
        print(path.read_text(errors="replace")[-4000:])


async def read_events(
    platform: Platform, event_type: str, match: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """Every event of ``event_type`` currently in the FORGE_EVENTS stream that matches."""
    from forge_common.nats import Names

    names = Names(platform.nats_prefix)
    nc = await nats.connect(platform.nats_url)
    try:
        js = nc.jetstream()
        subject = names.event_subject(event_type)
        info = await js.stream_info(names.events_stream, subjects_filter=subject)
        found: list[dict[str, Any]] = []
        if not info.state.messages:
            return found
        sub = await js.pull_subscribe(
            subject,
            stream=names.events_stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0),
        )
        remaining = True
        while remaining:
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in msgs:
                body = msgspec.json.decode(msg.data)
                if match is None or match(body):
                    found.append(body)
                if msg.metadata.num_pending == 0:
                    remaining = False
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def wait_for_event(
    platform: Platform,
    event_type: str,
    match: Callable[[dict[str, Any]], bool],
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Wait (without sleeping blindly) for the first matching event; fails after ``timeout``."""
    from forge_common.nats import Names

    names = Names(platform.nats_prefix)
    nc = await nats.connect(platform.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            names.event_subject(event_type),
            stream=names.events_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no matching {event_type} event within {timeout}s")
            try:
                msg = await sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                raise AssertionError(f"no matching {event_type} event within {timeout}s") from None
            body = msgspec.json.decode(msg.data)
            if match(body):
                await sub.unsubscribe()
                return dict(body)
    finally:
        await nc.close()
