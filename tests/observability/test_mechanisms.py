"""The shared mechanisms behind the metrics and traces: counts only for committed changes,
bounded labels, and the standard OpenTelemetry settings deciding the exporter."""

from __future__ import annotations

import contextlib

import pytest

from forge_common.db import create_pool, on_commit
from forge_common.metrics import BoundedLabel
from forge_common.tracing import exporter_name

from .conftest import Observed


async def test_a_change_is_counted_only_once_its_transaction_committed(observed: Observed) -> None:
    pool = await create_pool(observed.platform.database_url, 1, 2, "observability-test")
    counted: list[str] = []
    try:
        async with pool.connection() as conn, conn.transaction():
            on_commit(conn, lambda: counted.append("committed"))
            assert counted == []  # not yet: the transaction may still roll back
        assert counted == ["committed"]

        async def failing_change() -> None:
            async with pool.connection() as conn, conn.transaction():
                on_commit(conn, lambda: counted.append("rolled back"))
                raise RuntimeError("the change fails after the count was asked for")

        with pytest.raises(RuntimeError):
            await failing_change()
        assert counted == ["committed"]

        async with pool.connection() as conn, conn.transaction():
            with contextlib.suppress(RuntimeError):
                async with conn.transaction():  # a savepoint that rolls back
                    on_commit(conn, lambda: counted.append("savepoint"))
                    raise RuntimeError
            async with conn.transaction():  # a savepoint that is kept: counted with the outer commit
                on_commit(conn, lambda: counted.append("kept savepoint"))
            assert counted == ["committed"]
        assert counted == ["committed", "kept savepoint"]
    finally:
        await pool.close()


def test_a_bounded_label_folds_values_past_its_limit_into_other() -> None:
    label = BoundedLabel(limit=3)
    assert [label(v) for v in ("lint", "test", "build", "deploy", "test", "e2e")] == [
        "lint",
        "test",
        "build",
        "other",
        "test",
        "other",
    ]


@pytest.mark.parametrize(
    ("environ", "forge_setting", "expected"),
    [
        ({}, "none", "none"),
        ({}, "console", "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "none", "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "none", "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, "none", "none"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "otlp", "console"),
        ({"OTEL_TRACES_EXPORTER": "zipkin,otlp"}, "none", "otlp"),
    ],
)
def test_the_standard_settings_choose_the_exporter(environ: dict[str, str], forge_setting: str, expected: str) -> None:
    assert exporter_name(forge_setting, environ) == expected
