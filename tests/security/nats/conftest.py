"""A platform on an authenticated NATS server of its own, as ``make run`` starts it (tests/security/nats).

The shared test servers (``FORGE_TEST_NATS_URL``) accept anonymous connections, so these tests
start their own ``nats-server`` (the one ``make run`` uses) with the configuration
``forge_common.nats_auth`` generates: anonymous connections refused, every process connecting
with its own identity's credentials and permissions.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge_dev.testing import Platform, session_platform


class SecurePlatform:
    def __init__(self, platform: Platform, repos: Path) -> None:
        self.platform = platform
        self.repos = repos

    def refused_forge_processes(self) -> list[str]:
        """Log lines in which NATS refused a Forge process something: the permission model
        must let every process do its work."""
        lines = []
        for proc in self.platform.stack.infra.processes:
            if proc.log_path is not None and proc.log_path.exists():
                text = proc.log_path.read_text(errors="replace")
                lines += [f"{proc.name}: {line}" for line in text.splitlines() if "nats.permission_denied" in line]
        return lines


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurePlatform]:
    repos = Path(tempfile.mkdtemp(prefix="forge-security-repos-"))
    env = {
        "FORGE_GIT_URL_TEMPLATE": repos.as_uri() + "/{repository}.git",
        "FORGE_LOG_FLUSH_INTERVAL": "0.3s",
        "FORGE_STEP_KILL_GRACE": "0.5s",
        # Outgoing webhooks to a receiver on loopback (test_nats_auth's webhook test).
        "FORGE_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    try:
        with session_platform(env=env, workers=1, secure_nats=True) as platform:
            yield SecurePlatform(platform, repos)
    finally:
        shutil.rmtree(repos, ignore_errors=True)
