"""Session-wide harness: one platform (every Forge process, real servers) per test session.

Tests that need other settings start extra processes with ``platform.start_process``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from forge_dev.testing import Platform, session_platform


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    with session_platform(workers=2) as p:
        yield p
