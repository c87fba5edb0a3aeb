"""Browser tests of the web console: Debian's chromium + chromium-driver driven by Selenium.

The platform is real: a pipeline instance and a worker of the test's own (own database and NATS
prefix, fetching from local git repositories) behind a gateway of its own that also routes
releases, deployments and approvals to the session's shared services.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from forge_dev.stack import Process
from forge_dev.testing import Platform

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


def _browser_binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    return browser, driver


@contextlib.contextmanager
def start_browser(profile: Path, *extra_flags: str) -> Iterator[Any]:
    binary, driver_path = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(90)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with start_browser(tmp_path / "chromium-profile") as driver:
        yield driver


class GitRepo:
    """A bare repository ``{root}/{repository}.git`` and a clone to commit from."""

    def __init__(self, root: Path, repository: str, author: str) -> None:
        self.bare = root / f"{repository}.git"
        self.work = root / "work" / repository
        self.author = author
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True)
        self._git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self._git("init", "-q", "-b", "main", cwd=self.work)

    def _git(self, *args: str, cwd: Path) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Forge Console Test",
            "GIT_AUTHOR_EMAIL": self.author,
            "GIT_COMMITTER_NAME": "Forge Console Test",
            "GIT_COMMITTER_EMAIL": self.author,
        }
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Writes (or, for None, deletes) files, commits and pushes to main; returns the SHA."""
        for path, content in files.items():
            if content is None:
                (self.work / path).unlink()
                continue
            (self.work / path).parent.mkdir(parents=True, exist_ok=True)
            (self.work / path).write_text(content)
        self._git("add", "-A", cwd=self.work)
        self._git("commit", "-q", "-m", message, cwd=self.work)
        self._git("push", "-q", str(self.bare), "HEAD:refs/heads/main", cwd=self.work)
        return self._git("rev-parse", "HEAD", cwd=self.work).strip()


class Lane:
    """Pipeline instance + worker on local repositories, behind a gateway of their own."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.tag = uuid.uuid4().hex[:8]
        self.root = Path(tempfile.mkdtemp(prefix=f"forge-console-{self.tag}-"))
        self.repos = self.root / "repos"
        # Steps run sandboxed and see nothing of the host but this directory, read-only
        # (FORGE_STEP_READONLY_PATHS); outside the 0700 one above, so the step user can reach it.
        self.signals = Path(tempfile.mkdtemp(prefix=f"forge-console-signals-{self.tag}-"))
        os.chmod(self.signals, 0o755)  # noqa: S103 - the step user (nobody) reads the signals
        self.database = f"forge_console_{self.tag}"
        self.admin = platform.stack.infra.admin_database_url
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        from forge_dev.stack import _with_database

        self.database_url = _with_database(self.admin, self.database)
        self.env = {
            "FORGE_DATABASE_URL": self.database_url,
            "FORGE_NATS_PREFIX": f"{platform.nats_prefix}c{self.tag}",
            "FORGE_GIT_URL_TEMPLATE": self.repos.as_uri() + "/{repository}.git",
            "FORGE_GIT_CACHE_DIR": str(self.root / "git-cache"),
            "FORGE_LOG_FLUSH_INTERVAL": "0.3s",
            "FORGE_STEP_READONLY_PATHS": str(self.signals),
            "FORGE_DB_POOL_MIN": "1",
        }
        self.processes: list[Process] = []
        self.gateway_url = ""

    def start(self) -> str:
        pipeline = self.platform.start_process("pipeline", env=self.env)
        self.processes.append(pipeline)
        # A release service on the platform's database that verifies pipeline_run_id against this
        # lane's pipeline, where the runs are (as in tests/e2e).
        release = self.platform.start_process("release", env={"FORGE_PIPELINE_URL": pipeline.url})
        self.processes.append(release)
        self.processes.append(
            self.platform.start_process(
                "worker", env={**self.env, "FORGE_PIPELINE_URL": pipeline.url, "FORGE_RELEASE_URL": release.url or ""}
            )
        )
        gateway = self.platform.start_process("gateway", env={"FORGE_PIPELINE_URL": pipeline.url})
        self.processes.append(gateway)
        self.gateway_url = gateway.url
        return gateway.url

    def repo(self, repository: str, author: str) -> GitRepo:
        return GitRepo(self.repos, repository, author)

    def wait_for(self, name: str) -> str:
        """A shell fragment that blocks until the test calls :meth:`signal` with ``name``."""
        return f"while [ ! -e {self.signals / name} ]; do sleep 0.05; done"

    def signal(self, name: str) -> None:
        (self.signals / name).touch()

    def log_tails(self, chars: int = 4000) -> str:
        parts = []
        for proc in self.processes:
            if proc.log_path and proc.log_path.exists():
                parts.append(f"----- {proc.name} -----\n{proc.log_path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        with contextlib.suppress(Exception), psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.signals, ignore_errors=True)


@pytest.fixture
def lane(platform: Platform) -> Iterator[Lane]:
    lane = Lane(platform)
    try:
        yield lane
    finally:
        lane.close()


@pytest.fixture
def screenshots() -> Iterator[Callable[[Any, str], Path]]:
    """Saves a PNG of the page; FORGE_CONSOLE_SCREENSHOTS keeps them in a folder of your choice."""
    folder = Path(os.environ.get("FORGE_CONSOLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="forge-console-shots-"))
    folder.mkdir(parents=True, exist_ok=True)

    def take(driver: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        return path

    return take
