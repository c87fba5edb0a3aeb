"""The worker's git cache: one bare mirror per repository, one checkout per commit.

A commit already in the mirror costs one ``rev-parse``; otherwise the mirror is fetched (never
re-cloned). Checkouts are the commit's files (exported through an index file of their own, not
registered worktrees) shared by every task of that commit on this machine and pruned when they
have not been used for a while. Worker processes sharing the cache directory serialise on a
per-repository ``flock``.

Every git command has a deadline (``FORGE_GIT_TIMEOUT``): past it the command and its children
(``git-remote-http``, ``ssh``) are killed as a process group and the job fails with an error that
names the operation and the remote, so a stalled remote never holds the repository's lock (and
with it every job of that repository on this machine) while heartbeats keep the job alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from forge_common.redact import Redactor, redact_url, url_credentials

__all__ = ["GitCache", "GitError"]

log = structlog.get_logger(__name__)
_MARKER = ".forge-checkout-complete"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A full object name (SHA-1 or SHA-256): used as it is, without a ``rev-parse`` first.
_FULL_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
# Every git command the worker runs: no repository hooks (a hook planted in a mirror would run
# inside the worker), no fsmonitor program, no ext:: or fd:: transport (they run commands), no
# replace refs. Steps cannot write the cache anyway (it is not in their sandbox); this holds
# even if a mirror's files were changed some other way. The worker's own git configuration
# (credential helpers, git-lfs) still applies: the operator's, not a repository's.
_SAFE_OPTIONS = (
    "-c",
    f"core.hooksPath={os.devnull}",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "protocol.fd.allow=never",
    "--no-replace-objects",
)


class GitError(Exception):
    """The repository or commit could not be fetched; the message is shown on the run."""


class GitCache:
    def __init__(
        self,
        cache_dir: Path,
        url_template: str,
        max_idle_checkouts: float = 6 * 3600.0,
        redact: Redactor | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.root = cache_dir
        self.url_template = url_template
        self.max_idle = max_idle_checkouts
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._known: dict[tuple[str, str], str] = {}  # (repository, sha) -> full sha
        self._checkouts: dict[tuple[str, str], Path] = {}
        self._last_prune = 0.0
        # Errors are shown on runs: without the credentials of FORGE_GIT_URL_TEMPLATE.
        self.redact = redact or Redactor(url_credentials(url_template))
        self._env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "true",
            "LC_ALL": "C",
        }

    def display_url(self, repository: str) -> str:
        """The repository's URL for messages: no credentials."""
        return redact_url(self.url(repository))

    def url(self, repository: str) -> str:
        return self.url_template.replace("{repository}", repository)

    @staticmethod
    def _key(repository: str) -> str:
        return _SAFE.sub("_", repository.replace("/", "__"))

    def mirror_path(self, repository: str) -> Path:
        return self.root / "mirrors" / f"{self._key(repository)}.git"

    async def _git(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        doing: str = "",
        index: Path | None = None,
    ) -> tuple[int, str, str]:
        """Run git; ``doing`` says what for in a timeout's message (default: ``git <command>``);
        ``index``: the index file it uses (``GIT_INDEX_FILE``)."""
        proc = await asyncio.create_subprocess_exec(
            "git",
            *_SAFE_OPTIONS,
            *args,
            cwd=str(cwd) if cwd else None,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env if index is None else {**self._env, "GIT_INDEX_FILE": str(index)},
            start_new_session=True,  # its own process group: a timeout kills its helpers too
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            if isinstance(exc, TimeoutError):
                what = doing or f"git {_command(args)}"
                raise GitError(self.redact(f"{what} timed out after {self.timeout:g}s (FORGE_GIT_TIMEOUT)")) from None
            raise
        code = proc.returncode or 0
        if check and code != 0:
            raise GitError(self.redact(f"git {args[0]} failed: {err.decode(errors='replace').strip()[:500]}"))
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    @contextlib.asynccontextmanager
    async def _locked(self, repository: str) -> AsyncIterator[None]:
        key = self._key(repository)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            lock_dir = self.root / "locks"
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    async def _resolve(self, mirror: Path, sha: str) -> str | None:
        code, out, _ = await self._git(
            "--git-dir", str(mirror), "rev-parse", "--verify", "-q", f"{sha}^{{commit}}", check=False
        )
        return out.strip() if code == 0 and out.strip() else None

    async def resolve(self, repository: str, sha: str) -> str:
        """The full SHA of ``sha`` in ``repository``, fetching the mirror only when needed."""
        cached = self._known.get((repository, sha))
        if cached:
            return cached
        mirror = self.mirror_path(repository)
        async with self._locked(repository):
            full = await self._resolve(mirror, sha) if (mirror / "HEAD").exists() else None
            if full is None:
                await self._fetch(repository, mirror)
                full = await self._resolve(mirror, sha)
            if full is None:
                raise GitError(f"commit {sha} not found in {repository} ({self.display_url(repository)})")
        self._known[(repository, sha)] = full
        return full

    async def _fetch(self, repository: str, mirror: Path) -> None:
        if not (mirror / "HEAD").exists():
            mirror.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per repository
            await self._git("init", "--bare", "-q", str(mirror))
            await self._git("--git-dir", str(mirror), "remote", "add", "origin", self.url(repository))
        started = time.monotonic()
        code, _, err = await self._git(
            "--git-dir",
            str(mirror),
            "fetch",
            "-q",
            "--prune",
            "--tags",
            "--force",
            "origin",
            "+refs/heads/*:refs/heads/*",
            check=False,
            doing=f"fetching {repository} from {self.display_url(repository)}",
        )
        if code != 0:
            raise GitError(
                self.redact(f"cannot fetch {repository} from {self.display_url(repository)}: {err.strip()[:500]}")
            )
        log.info("git.fetched", repository=repository, duration_ms=round((time.monotonic() - started) * 1000, 1))

    async def checkout(self, repository: str, sha: str) -> tuple[str, Path]:
        """The commit's files (full sha, path); shared by every task of that commit. A full SHA
        is exported without resolving it first (one git command less per job); only when the
        export does not find it is the mirror fetched."""
        full = sha.lower() if _FULL_SHA.fullmatch(sha) else await self.resolve(repository, sha)
        known = self._checkouts.get((repository, full))
        if known is not None and (known / _MARKER).exists():
            return full, known
        path = self.root / "checkouts" / self._key(repository) / full
        if not (path / _MARKER).exists():
            async with self._locked(repository):
                if not (path / _MARKER).exists():
                    await self._export_fetching(repository, full, path)
        self._known[(repository, full)] = full
        self._checkouts[(repository, full)] = path
        await self._maybe_prune(repository)
        return full, path

    async def _export_fetching(self, repository: str, full: str, path: Path) -> None:
        """Export ``full`` to ``path`` (under the repository's lock); a commit the mirror does
        not have yet is fetched first."""
        mirror = self.mirror_path(repository)
        _empty_dir(path)
        if not await self._export(mirror, full, path, check=False):
            # Not in the mirror yet (or not a commit): fetch, then it must be there.
            if await self._resolve(mirror, full) != full:
                await self._fetch(repository, mirror)
                if await self._resolve(mirror, full) != full:
                    raise GitError(f"commit {full} not found in {repository} ({self.display_url(repository)})")
            _empty_dir(path)
            await self._export(mirror, full, path)
        (path / _MARKER).touch()

    async def _export(self, mirror: Path, full: str, path: Path, check: bool = True) -> bool:
        """The commit's files at ``path`` (filters and modes as a checkout applies them), through
        an index file of its own: one ``git checkout <commit> -- .``, or with ``check`` (the
        commit is known to be there: also an empty tree, which that pathspec does not match)
        ``read-tree`` then ``checkout-index``. False (without ``check``) when the mirror has no
        such commit. Not a registered ``git worktree``: ``worktree add`` reads every worktree
        the mirror has, so its cost grew with every commit checked out (a single-step run's
        worker CPU doubled over ~1,000 commits, docs/performance.md)."""
        index = path.parent / f".{full}.index"
        work = ("--git-dir", str(mirror), "--work-tree", str(path))
        try:
            if not check:
                code, _, _ = await self._git(
                    *work, "checkout", "-q", "-f", f"{full}^{{commit}}", "--", ".", index=index, check=False
                )
                return code == 0
            await self._git(*work, "read-tree", f"{full}^{{commit}}", index=index)
            await self._git(*work, "checkout-index", "--all", "--force", index=index)
        finally:
            index.unlink(missing_ok=True)
        return True

    async def fresh_checkout(self, repository: str, sha: str, dest: Path) -> tuple[str, Path]:
        """A private checkout of ``sha`` at ``dest`` (artifact builds: nothing another job left
        in the shared worktree can leak into what is published): cloned from the mirror, then
        its ``.git`` removed, leaving the commit's files."""
        full = await self.resolve(repository, sha)
        mirror = self.mirror_path(repository)
        await self._git("clone", "-q", "--shared", "--no-checkout", str(mirror), str(dest))
        await self._git("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", full, cwd=dest)
        # The files alone, as a CI step's workspace has them (sandbox.Workspace copies no .git).
        await asyncio.to_thread(shutil.rmtree, dest / ".git")
        return full, dest

    async def list_files(self, repository: str, full_sha: str) -> list[str]:
        mirror = self.mirror_path(repository)
        _, out, _ = await self._git("--git-dir", str(mirror), "ls-tree", "-r", "--name-only", "-z", full_sha)
        return [p for p in out.split("\0") if p]

    def touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path / _MARKER)

    async def _maybe_prune(self, repository: str) -> None:
        now = time.time()
        if now - self._last_prune < 600:
            return
        self._last_prune = now
        base = self.root / "checkouts" / self._key(repository)
        removed = False
        for child in base.iterdir() if base.exists() else []:
            marker = child / _MARKER
            with contextlib.suppress(OSError):
                if marker.exists() and now - marker.stat().st_mtime > self.max_idle:
                    shutil.rmtree(child, ignore_errors=True)
                    self._checkouts = {k: v for k, v in self._checkouts.items() if v != child}
                    removed = True
        if removed:
            await self._git("--git-dir", str(self.mirror_path(repository)), "worktree", "prune", check=False)


def _empty_dir(path: Path) -> None:
    """``path`` as a new empty directory (what an interrupted export left there removed)."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _command(args: tuple[str, ...]) -> str:
    """The git subcommand in ``args`` (after ``--git-dir <path>`` and ``-c <setting>``)."""
    rest = list(args)
    while rest and rest[0] in ("--git-dir", "-c", "-C"):
        rest = rest[2:]
    return rest[0] if rest else "command"
