"""Run a service's ASGI app with uvicorn after validating its settings."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn

from .logging import configure_logging
from .settings import CommonSettings, SettingsError, load

__all__ = ["serve"]

S = TypeVar("S", bound=CommonSettings)


def serve(service: str, settings_cls: type[S], create_app: Callable[[S], Any], **uvicorn_options: Any) -> None:
    """``uvicorn_options`` override the defaults below (the gateway turns ``proxy_headers`` off)."""
    try:
        settings = load(settings_cls)
    except SettingsError as exc:
        print(f"forge-{service}: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        raise SystemExit(2) from None
    configure_logging(service, settings.log_level, settings.log_format)
    app = create_app(settings)
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
