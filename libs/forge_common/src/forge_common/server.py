"""A service's command line: ``forge-<service>`` serves its ASGI app with uvicorn after validating
its settings; ``forge-<service> migrate`` applies its pending database migrations and exits."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import structlog
import uvicorn

from .logging import configure_logging
from .settings import CommonSettings, SettingsError, load

__all__ = ["serve"]

S = TypeVar("S", bound=CommonSettings)


def serve(
    service: str,
    settings_cls: type[S],
    create_app: Callable[[S], Any],
    argv: Sequence[str] | None = None,
    **uvicorn_options: Any,
) -> None:
    """``uvicorn_options`` override the defaults below (the gateway turns ``proxy_headers`` off)."""
    parser = argparse.ArgumentParser(prog=f"forge-{service}", description=f"The Forge {service} service.")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["serve", "migrate"],
        default="serve",
        help="serve (default): run the HTTP service; migrate: apply pending migrations and exit (idempotent)",
    )
    command = parser.parse_args(sys.argv[1:] if argv is None else argv).command
    try:
        settings = load(settings_cls)
    except SettingsError as exc:
        _invalid(service, exc)
    configure_logging(service, settings.log_level, settings.log_format)
    try:
        # create_app may read more settings (the pipeline's dispatcher and job settings).
        app = create_app(settings)
    except SettingsError as exc:
        _invalid(service, exc)
    if command == "migrate":
        _migrate(service, app)
        return
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": "warning",
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
        "backlog": 2048,
    }
    options.update(uvicorn_options)
    uvicorn.run(app, **options)


def _invalid(service: str, exc: SettingsError) -> NoReturn:
    print(f"forge-{service}: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
    raise SystemExit(2) from None


def _migrate(service: str, app: Any) -> None:
    # The app's runtime knows the service's schema and migration package; nothing is started.
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    log = structlog.get_logger("forge_common.server")
    if runtime is None or not runtime.schema:
        log.info("db.nothing_to_migrate", service=service)
        return
    applied = asyncio.run(runtime.migrate())
    log.info("db.migrated", service=service, schema=runtime.schema, applied=applied)
