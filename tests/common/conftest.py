"""Fixtures of the foundation tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from forge_dev.testing import Platform

from .servers import ThreadedServer, widget_app


@pytest.fixture(scope="session")
async def widgets(platform: Platform) -> AsyncIterator[str]:
    """Base URL of a shell-built app (build_app) whose routes raise every error class."""
    server = await ThreadedServer(widget_app(platform.env())).start()
    yield server.url
    await server.stop()
