"""The GitOps repository, through the git CLI.

Each process keeps a private *bare* clone and builds commits with plumbing (a temporary index,
``commit-tree``) on top of the freshly fetched branch head, then pushes ``sha:refs/heads/branch``.
No working tree means no checkout cost and nothing to clean up after a failed attempt.

Concurrent writers never lose a commit: within a process an asyncio lock serializes commits;
across replicas (or humans) a push rejected because the branch moved is retried from a new
fetch, re-applying the file on the new head. The sha returned is the commit that landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

import structlog
from prometheus_client import Counter, Histogram

__all__ = ["Author", "GitError", "GitOpsRepository", "redact"]

log = structlog.get_logger(__name__)

PUSH_RETRIES = Counter(
    "forge_deployment_gitops_push_retries_total", "GitOps pushes re-applied because the branch moved"
)
COMMIT_SECONDS = Histogram(
    "forge_deployment_gitops_commit_seconds",
    "Time to land one GitOps commit, retries included",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# What a push says when another writer got there first: fetch, re-apply, push again.
_RACE = re.compile(
    r"non-fast-forward|fetch first|\[rejected\]|cannot lock ref|failed to update ref|"
    r"failed to lock|stale info|Unable to create .*\.lock|incorrect old value",
    re.IGNORECASE,
)
_MISSING_BRANCH = re.compile(r"couldn't find remote ref|could not find remote ref", re.IGNORECASE)


class GitError(Exception):
    """A git command failed for a reason retrying does not fix."""


@dataclass(frozen=True)
class Author:
    name: str
    email: str

    @classmethod
    def of(cls, identity: str) -> Author:
        email = (
            identity if "@" in identity else f"{re.sub(r'[^A-Za-z0-9._-]+', '-', identity) or 'unknown'}@forge.invalid"
        )
        return cls(name=identity or "unknown", email=email)


def redact(url: str) -> str:
    """A URL fit for logs and error messages: no embedded credentials."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return url


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url2pathname(urlsplit(url).path))
    if "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url):
        return Path(url)
    return None


class GitOpsRepository:
    def __init__(
        self,
        url: str,
        branch: str,
        workdir: Path,
        committer: Author,
        push_attempts: int = 50,
        remove_workdir: bool = False,
    ) -> None:
        self.url = url
        self.branch = branch
        self.workdir = workdir
        self.committer = committer
        self.push_attempts = push_attempts
        self.remove_workdir = remove_workdir
        self._lock = asyncio.Lock()
        self._head: str | None = None  # the branch head as this process last saw it
        self._remote_ref = f"refs/remotes/origin/{branch}"
        self._env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_DIR": str(workdir),
            "LC_ALL": "C",
        }

    async def open(self) -> None:
        """Create the embedded repository if it is a missing local path, and this process's clone."""
        local = _local_path(self.url)
        if local is not None and not (local / "HEAD").exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            # Two replicas starting at once both init: the second one only re-initializes.
            await self._run(
                ["git", "init", "--bare", "-q", f"--initial-branch={self.branch}", str(local)], git_dir=False
            )
            log.info("gitops.repository_created", path=str(local))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.workdir / "HEAD").exists():
            await self._run(["git", "init", "--bare", "-q", str(self.workdir)], git_dir=False)
            await self._git("remote", "add", "origin", self.url)
            await self._git("config", "gc.auto", "0")
        log.info("gitops.opened", url=redact(self.url), branch=self.branch, workdir=str(self.workdir))

    async def close(self) -> None:
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def fetch(self) -> str | None:
        """Fetch the branch; its head sha, or None while the repository has no such branch."""
        async with self._lock:
            return await self._fetch()

    async def _fetch(self) -> str | None:
        rc, _, err = await self._run(
            ["git", "-c", "maintenance.auto=false", "fetch", "-q", "--no-tags", "origin", f"+refs/heads/{self.branch}:{self._remote_ref}"], check=False
        )
        if rc != 0:
            text = err.decode(errors="replace")
            if _MISSING_BRANCH.search(text):
                self._head = None
                return None
            raise GitError(f"fetching {redact(self.url)} failed: {_last_line(text)}")
        _, out, _ = await self._git("rev-parse", "--verify", self._remote_ref)
        self._head = out.decode().strip()
        return self._head

    async def commit_file(self, path: str, content: bytes, message: str, author: Author) -> str:
        """Land ``content`` at ``path`` on the branch as exactly one commit; the sha that landed."""
        started = time.perf_counter()
        _, out, _ = await self._git("hash-object", "-w", "--stdin", stdin=content)
        blob = out.decode().strip()
        async with self._lock:
            for attempt in range(1, self.push_attempts + 1):
                # Optimistic: build on the head this process last saw (usually its own previous
                # commit, so no fetch); a rejected push means someone moved it: fetch then.
                parent = self._head if self._head is not None and attempt == 1 else await self._fetch()
                sha = await self._build_commit(parent, path, blob, message, author)
                rc, pout, err = await self._run(
                    ["git", "push", "-q", "--porcelain", "origin", f"{sha}:refs/heads/{self.branch}"], check=False
                )
                if rc == 0:
                    self._head = sha
                    COMMIT_SECONDS.observe(time.perf_counter() - started)
                    if attempt > 1:
                        log.info("gitops.commit_landed_after_retries", sha=sha, attempts=attempt, path=path)
                    return sha
                text = err.decode(errors="replace") + pout.decode(errors="replace")
                if not _RACE.search(text):
                    raise GitError(f"pushing to {redact(self.url)} failed: {_last_line(text)}")
                PUSH_RETRIES.inc()
                # Another writer moved the branch: back off a little (jittered) and re-apply.
                await asyncio.sleep(random.uniform(0.005, 0.02) * min(attempt, 10))  # noqa: S311
        raise GitError(f"pushing to {redact(self.url)} kept losing races after {self.push_attempts} attempts")

    async def _build_commit(self, parent: str | None, path: str, blob: str, message: str, author: Author) -> str:
        index = self.workdir / f"index-{os.getpid()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if parent is None:
                await self._git("read-tree", "--empty", env=env)
            else:
                await self._git("read-tree", parent, env=env)
            await self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            _, out, _ = await self._git("write-tree", env=env)
        finally:
            with contextlib.suppress(FileNotFoundError):
                index.unlink()
        tree = out.decode().strip()
        ident = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": self.committer.name,
            "GIT_COMMITTER_EMAIL": self.committer.email,
        }
        args = ["commit-tree", tree, "-F", "-"]
        if parent is not None:
            args[2:2] = ["-p", parent]
        _, out, _ = await self._git(*args, stdin=message.encode(), env=ident)
        return out.decode().strip()

    async def read_file(self, revision: str, path: str) -> bytes | None:
        rc, out, _ = await self._run(["git", "cat-file", "blob", f"{revision}:{path}"], check=False)
        return out if rc == 0 else None

    async def has_commit(self, sha: str) -> bool:
        rc, _, _ = await self._run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], check=False)
        return rc == 0

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        rc, _, _ = await self._run(["git", "merge-base", "--is-ancestor", ancestor, descendant], check=False)
        return rc == 0

    async def _git(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, bytes, bytes]:
        return await self._run(["git", *args], stdin=stdin, env=env)

    async def _run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
        git_dir: bool = True,
    ) -> tuple[int, bytes, bytes]:
        full = {**self._env, **(env or {})}
        if not git_dir:
            full.pop("GIT_DIR", None)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full,
        )
        out, err = await proc.communicate(stdin)
        rc = proc.returncode if proc.returncode is not None else -1
        if check and rc != 0:
            raise GitError(f"git {argv[1]} failed: {_last_line(err.decode(errors='replace'))}")
        return rc, out, err


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return redact(lines[-1]) if lines else "no output"
