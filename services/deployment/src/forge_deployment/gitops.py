"""The GitOps repository.

A commit's objects (blob, trees, commit) are written in-process with dulwich on top of the
branch head; nothing is checked out. Two ways to land it:

* **local** (a ``file://`` URL or a path, the embedded default): the objects go straight into the
  bare repository and the branch moves by compare-and-swap on the ref (git's own ``.lock``
  protocol, so it is safe next to ``git push`` from anyone else). No git process at all.
* **remote** (any other URL): each process keeps a private bare clone; the git CLI fetches and
  pushes ``sha:refs/heads/branch``, so every URL and credential helper git supports works.

Every git process runs under a deadline (``timeout``, one operation) and is killed with its
process group when it passes it; a whole commit, waiting for the lock included, has its own
(``commit_timeout``). A stalled remote therefore fails that commit with :class:`GitTimeout`
(naming the remote, credentials redacted, and the operation) instead of holding the lock.

A push killed at its deadline may still have landed: the remote can move the branch and only
answer late (a slow ``post-receive`` hook, a slow proxy). So before such a push counts as
failed the remote is asked, within ``confirm_timeout``, whether the branch now holds the commit
(points at it or descends from it): if it does, the commit landed and its sha is returned. If
the remote cannot be asked either, the :class:`GitTimeout` says the commit may have landed
(``unconfirmed_commit``).

Concurrent writers never lose a commit: within a process an asyncio lock serializes commits;
across replicas (or humans) a lost race (CAS mismatch, non-fast-forward push) re-reads the head,
re-applies the file on it and tries again. The sha returned is the commit that landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import structlog
from dulwich.errors import NotTreeError
from dulwich.file import FileLocked
from dulwich.object_store import BaseObjectStore, commit_tree_changes, tree_lookup_path
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.refs import Ref
from dulwich.repo import Repo
from prometheus_client import Counter, Histogram

from forge_common.redact import Redactor
from forge_common.redact import redact_url as redact

__all__ = ["Author", "GitError", "GitOpsRepository", "GitTimeout", "local_path", "redact"]

log = structlog.get_logger(__name__)

PUSH_RETRIES = Counter(
    "forge_deployment_gitops_push_retries_total", "GitOps commits re-applied because the branch moved"
)
COMMIT_SECONDS = Histogram(
    "forge_deployment_gitops_commit_seconds",
    "Time to land one GitOps commit, retries included",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# What a push says when another writer got there first: fetch, re-apply, push again.
_RACE = re.compile(
    r"non-fast-forward|fetch first|\[rejected\]|cannot lock ref|failed to update ref|"
    r"failed to lock|stale info|Unable to create .*\.lock|incorrect old value",
    re.IGNORECASE,
)
_MISSING_BRANCH = re.compile(r"couldn't find remote ref|could not find remote ref", re.IGNORECASE)
# Longest wait for the remote's answer to "did the push that timed out land?" (by default).
CONFIRM_TIMEOUT = 10.0


# What one commit changes: (path, content), None content deleting the path.
Changes = list[tuple[str, bytes | None]]
# Computes the changes for a given parent commit (None: the branch does not exist yet).
Plan = Callable[[str | None], Changes]


class GitError(Exception):
    """A git operation failed for a reason retrying does not fix."""


class GitTimeout(GitError):
    """A git operation (or a whole commit) did not finish within its deadline.

    ``unconfirmed_commit``: a push of that commit timed out and the remote could not be asked
    afterwards whether it landed, so it may have (``note`` says so in the message)."""

    def __init__(
        self, operation: str, remote: str, seconds: float, *, note: str = "", unconfirmed_commit: str | None = None
    ) -> None:
        message = f"{operation} {remote} did not finish within {_seconds(seconds)}"
        super().__init__(f"{message}; {note}" if note else message)
        self.operation = operation
        self.remote = remote
        self.seconds = seconds
        self.unconfirmed_commit = unconfirmed_commit


def _seconds(value: float) -> str:
    return f"{value:g}s"


@dataclass(frozen=True)
class Author:
    name: str
    email: str

    def ident(self) -> bytes:
        """``Name <email>`` with the characters git's ident format cannot hold removed."""
        name = re.sub(r"[<>\n\r\0]+", "", self.name).strip() or "unknown"
        email = re.sub(r"[<>\s\0]+", "", self.email) or "unknown@forge.invalid"
        return f"{name} <{email}>".encode()

    @classmethod
    def of(cls, identity: str) -> Author:
        if "@" in identity:
            return cls(name=identity, email=identity)
        local = re.sub(r"[^A-Za-z0-9._-]+", "-", identity) or "unknown"
        return cls(name=identity or "unknown", email=f"{local}@forge.invalid")


def local_path(url: str) -> Path | None:
    """The directory of a local repository URL (``file://`` or a plain path), else None."""
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
        use_cli: bool = False,
        timeout: float = 30.0,
        commit_timeout: float = 60.0,
        confirm_timeout: float | None = None,
    ) -> None:
        """``use_cli`` forces the fetch/push path even for a local repository (tests, hooks).

        ``timeout`` bounds each git process, ``commit_timeout`` one whole commit (waiting for the
        lock and lost races included); ``confirm_timeout`` (default: ``timeout``, at most 10s)
        asking the remote whether a push that timed out landed after all. So the lock is never
        held longer than ``commit_timeout`` + ``confirm_timeout``.
        """
        self.url = url
        self.timeout = timeout
        self.commit_timeout = commit_timeout
        self.confirm_timeout = min(timeout, CONFIRM_TIMEOUT) if confirm_timeout is None else confirm_timeout
        self.branch = branch
        self.committer = committer
        self.push_attempts = push_attempts
        self.workdir = workdir
        self.remove_workdir = remove_workdir
        local = local_path(url)
        self.local = local if local is not None and not use_cli else None
        # Where objects are written and read: the repository itself, or this process's clone.
        self.store_dir = self.local or workdir
        self._ref = f"refs/heads/{branch}" if self.local else f"refs/remotes/origin/{branch}"
        self._lock = asyncio.Lock()
        self._head: str | None = None  # the branch head as this process last saw it
        self._env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}

    @property
    def mode(self) -> str:
        return "local" if self.local else "remote"

    async def open(self) -> None:
        """Create the repository if it is a missing local path; for a remote, this process's clone."""
        target = local_path(self.url)
        if target is not None and not (target / "HEAD").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Two replicas starting at once both init: the second one only re-initializes.
            await self._run(["git", "init", "--bare", "-q", f"--initial-branch={self.branch}", str(target)])
            log.info("gitops.repository_created", path=str(target))
        if self.local is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if not (self.workdir / "HEAD").exists():
                await self._run(["git", "init", "--bare", "-q", str(self.workdir)])
                await self._git("remote", "add", "origin", self.url)
                await self._git("config", "gc.auto", "0")
        log.info("gitops.opened", url=redact(self.url), branch=self.branch, mode=self.mode)

    async def close(self) -> None:
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def fetch(self) -> str | None:
        """The branch head now (fetched first for a remote); None while there is no such branch."""
        deadline = time.monotonic() + self.timeout
        async with self._locked(deadline, "fetching from"):
            return await self._fetch(deadline)

    @asynccontextmanager
    async def _locked(self, deadline: float, operation: str) -> AsyncIterator[None]:
        """The process-wide lock, waited for until ``deadline`` at most."""
        try:
            await asyncio.wait_for(self._lock.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise GitTimeout(
                f"waiting for the lock before {operation}", redact(self.url), self.commit_timeout
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    async def _fetch(self, deadline: float) -> str | None:
        if self.local is None:
            rc, _, err = await self._git(
                "-c",
                "maintenance.auto=false",
                "fetch",
                "-q",
                "--no-tags",
                "origin",
                f"+refs/heads/{self.branch}:{self._ref}",
                check=False,
                operation="fetching from",
                deadline=deadline,
            )
            if rc != 0:
                text = err.decode(errors="replace")
                if _MISSING_BRANCH.search(text):
                    self._head = None
                    return None
                raise GitError(f"fetching {redact(self.url)} failed: {_git_said(text)}")
        self._head = await asyncio.to_thread(self._read_ref)
        return self._head

    def _read_ref(self) -> str | None:
        try:
            with Repo(str(self.store_dir)) as repo:
                return repo.refs[Ref(self._ref.encode())].decode()
        except KeyError:
            return None

    async def commit_file(self, path: str, content: bytes, message: str, author: Author) -> str:
        """Land ``content`` at ``path`` on the branch as exactly one commit; the sha that landed."""
        sha = await self.commit_changes(lambda _parent: [(path, content)], message, author)
        assert sha is not None
        return sha

    async def commit_changes(self, plan: Plan, message: str, author: Author) -> str | None:
        """Land the changes ``plan(parent)`` gives for the head they apply to, as one commit.

        ``plan`` runs again on the new head after a lost race; ``None`` content deletes a path.
        Returns the sha that landed, or None when the plan had nothing to change.
        """
        started = time.perf_counter()
        deadline = time.monotonic() + self.commit_timeout
        async with self._locked(deadline, "pushing to"):
            for attempt in range(1, self.push_attempts + 1):
                if attempt > 1 and time.monotonic() >= deadline:
                    raise GitTimeout("landing a commit on", redact(self.url), self.commit_timeout)
                # Optimistic first attempt: build on the head this process last saw (usually its
                # own previous commit); a lost race means someone moved it: read it again.
                parent = self._head if self._head is not None and attempt == 1 else await self._fetch(deadline)
                changes = await asyncio.to_thread(plan, parent)
                if not changes:
                    return None
                sha = await asyncio.to_thread(self._build_commit, parent, changes, message, author)
                if await self._publish(sha, parent, deadline):
                    self._head = sha
                    COMMIT_SECONDS.observe(time.perf_counter() - started)
                    if attempt > 1:
                        log.info("gitops.commit_landed_after_retries", sha=sha, attempts=attempt)
                    return sha
                PUSH_RETRIES.inc()
                # Another writer moved the branch: back off a little (jittered) and re-apply.
                await asyncio.sleep(random.uniform(0.002, 0.01) * min(attempt, 10))  # noqa: S311
        raise GitError(f"landing a commit on {redact(self.url)} kept losing races after {self.push_attempts} attempts")

    def files(self, revision: str, prefix: str) -> dict[str, bytes]:
        """Every file under ``prefix`` at ``revision`` (blocking: call it from a thread)."""
        found: dict[str, bytes] = {}
        with Repo(str(self.store_dir)) as repo:
            store = repo.object_store
            commit = store[ObjectID(revision.encode())]
            if not isinstance(commit, Commit):
                return found
            for entry in store.iter_tree_contents(commit.tree):
                path = entry.path.decode("utf-8", errors="replace") if entry.path else ""
                if path.startswith(prefix) and entry.sha is not None:
                    blob = store[entry.sha]
                    if isinstance(blob, Blob):
                        found[path] = blob.as_raw_string()
        return found

    async def _publish(self, sha: str, parent: str | None, deadline: float) -> bool:
        """Move the branch from ``parent`` to ``sha``; False when another writer moved it first."""
        if self.local is not None:
            return await asyncio.to_thread(self._compare_and_swap, sha, parent)
        try:
            rc, out, err = await self._git(
                "push",
                "-q",
                "--porcelain",
                "origin",
                f"{sha}:refs/heads/{self.branch}",
                check=False,
                operation="pushing to",
                deadline=deadline,
            )
        except GitTimeout as timeout:
            await self._confirm_push(sha, timeout)
            return True
        if rc == 0:
            return True
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if _RACE.search(stderr + stdout):
            return False
        raise GitError(f"pushing to {redact(self.url)} failed: {_push_refusal(stdout, stderr)}")

    async def _confirm_push(self, sha: str, timeout: GitTimeout) -> None:
        """After a push of ``sha`` was killed at its deadline: return if the remote's branch holds
        ``sha`` now (the push landed, only its answer was late), else raise ``timeout``, saying
        whether the branch was seen without it or the remote could not be asked."""
        deadline = time.monotonic() + self.confirm_timeout
        try:
            head = await self._fetch(deadline)
            landed = head == sha
            if head is not None and not landed:  # someone may have pushed on top of it since
                rc, _, err = await self._git("merge-base", "--is-ancestor", sha, head, check=False, deadline=deadline)
                if rc not in (0, 1):
                    raise GitError(f"git merge-base failed: {_git_said(err.decode(errors='replace'))}")
                landed = rc == 0
        except (GitError, OSError) as exc:
            log.warning("gitops.push_unconfirmed", sha=sha, remote=timeout.remote, error=str(exc))
            raise GitTimeout(
                timeout.operation,
                timeout.remote,
                timeout.seconds,
                note=f"commit {sha} may have landed: asking the remote afterwards failed too ({exc})",
                unconfirmed_commit=sha,
            ) from None
        if not landed:
            log.warning("gitops.push_timed_out", sha=sha, remote=timeout.remote, head=head)
            raise GitTimeout(
                timeout.operation,
                timeout.remote,
                timeout.seconds,
                note="the branch did not hold the commit when the remote was asked afterwards",
            ) from None
        log.warning("gitops.push_landed_late", sha=sha, remote=timeout.remote, seconds=timeout.seconds)

    def _compare_and_swap(self, sha: str, parent: str | None) -> bool:
        with Repo(str(self.store_dir)) as repo:
            return self._swap(repo, sha, parent)

    def _swap(self, repo: Repo, sha: str, parent: str | None) -> bool:
        refs = repo.refs
        ref = Ref(self._ref.encode())
        try:
            if parent is None:
                return bool(refs.add_if_new(ref, ObjectID(sha.encode())))
            return bool(refs.set_if_equals(ref, ObjectID(parent.encode()), ObjectID(sha.encode())))
        except FileLocked:
            return False  # another writer holds the ref's lock right now

    def _build_commit(self, parent: str | None, changes: Changes, message: str, author: Author) -> str:
        # Closed after use: an unclosed repository keeps its pack files open until collected.
        with Repo(str(self.store_dir)) as repo:
            return self._build_commit_in(_SharedStore(repo.object_store), parent, changes, message, author)

    def _build_commit_in(
        self, store: _SharedStore, parent: str | None, changes: Changes, message: str, author: Author
    ) -> str:
        entries: list[tuple[bytes, int | None, ObjectID | None]] = []
        for path, content in changes:
            if content is None:
                entries.append((path.encode(), None, None))
                continue
            blob = Blob.from_string(content)
            store.add_object(blob)
            entries.append((path.encode(), 0o100644, blob.id))
        if parent is None:
            empty = Tree()
            store.add_object(empty)
            base_tree = empty.id
        else:
            parent_commit = store[ObjectID(parent.encode())]
            if not isinstance(parent_commit, Commit):
                raise GitError(f"{parent} is not a commit")
            base_tree = parent_commit.tree
        commit = Commit()
        commit.tree = commit_tree_changes(store, base_tree, entries)  # type: ignore[arg-type]
        commit.parents = [ObjectID(parent.encode())] if parent else []
        commit.author = author.ident()
        commit.committer = self.committer.ident()
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.encoding = b"UTF-8"
        commit.message = message.encode()
        store.add_object(commit)
        return commit.id.decode()

    async def read_file(self, revision: str, path: str) -> bytes | None:
        return await asyncio.to_thread(self._read_file, revision, path)

    def _read_file(self, revision: str, path: str) -> bytes | None:
        with Repo(str(self.store_dir)) as repo:
            return self._read_file_in(repo.object_store, revision, path)

    @staticmethod
    def _read_file_in(store: BaseObjectStore, revision: str, path: str) -> bytes | None:
        try:
            commit = store[ObjectID(revision.encode())]
            if not isinstance(commit, Commit):
                return None
            _, blob_id = tree_lookup_path(store.__getitem__, commit.tree, path.encode())
            blob = store[blob_id]
        except (KeyError, NotTreeError, ValueError):
            return None
        return blob.as_raw_string() if isinstance(blob, Blob) else None

    async def has_commit(self, sha: str) -> bool:
        def check() -> bool:
            try:
                with Repo(str(self.store_dir)) as repo:
                    return ObjectID(sha.encode()) in repo.object_store
            except ValueError:
                return False

        return await asyncio.to_thread(check)

    async def last_change(self, revision: str, path: str) -> str | None:
        """The newest commit up to ``revision`` that changed ``path``."""
        rc, out, _ = await self._git("log", "-1", "--format=%H", revision, "--", path, check=False)
        sha = out.decode().strip()
        return sha if rc == 0 and sha else None

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        rc, _, _ = await self._git("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        return rc == 0

    async def _git(
        self, *args: str, check: bool = True, operation: str = "", deadline: float | None = None
    ) -> tuple[int, bytes, bytes]:
        argv = ["git", "--git-dir", str(self.store_dir), *args]
        return await self._run(argv, check=check, operation=operation, deadline=deadline)

    async def _run(
        self, argv: list[str], *, check: bool = True, operation: str = "", deadline: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run git, killed (with its helpers: its own process group) past ``timeout`` or ``deadline``."""
        limit = self.timeout if deadline is None else min(self.timeout, max(0.0, deadline - time.monotonic()))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit)
        except (TimeoutError, asyncio.CancelledError) as exc:
            _kill_group(proc.pid)
            await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            what = operation or f"git {_subcommand(argv)} in"
            target = redact(self.url) if operation else str(self.store_dir)
            log.warning("gitops.git_timeout", operation=what, remote=target, seconds=limit)
            raise GitTimeout(what, target, limit) from None
        rc = proc.returncode if proc.returncode is not None else -1
        if check and rc != 0:
            raise GitError(f"git {_subcommand(argv)} failed: {_git_said(err.decode(errors='replace'))}")
        return rc, out, err


class _SharedStore:
    """An object store several writers add to at once: an object another writer is adding
    (its loose file locked) or has added is simply there; git objects are immutable."""

    def __init__(self, store: BaseObjectStore) -> None:
        self.store = store

    def __getitem__(self, sha: ObjectID) -> ShaFile:
        return self.store[sha]

    def __contains__(self, sha: ObjectID) -> bool:
        return sha in self.store

    def add_object(self, obj: ShaFile) -> None:
        for _ in range(200):
            if obj.id in self.store:
                return
            try:
                self.store.add_object(obj)
                return
            except FileLocked:
                time.sleep(0.001)
        raise GitError(f"object {obj.id.decode()} stayed locked")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _subcommand(argv: list[str]) -> str:
    """The git subcommand of ``argv`` (after ``--git-dir X`` and ``-c k=v`` options)."""
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("--git-dir", "-c") else rest[1:]
    return rest[0] if rest else "?"


# What a remote says about a push it refuses (a hook's reason), at most this many lines of it.
_REMOTE_LINES = 3
_mask_credentials = Redactor()


def _push_refusal(stdout: str, stderr: str) -> str:
    """Why a push failed, in git's words. ``--porcelain`` output ends with ``Done``, so the last
    line says nothing: take the refused ref's status (``[remote rejected] (pre-receive hook
    declined)``) and what the remote printed (``remote: ...``, e.g. the hook's reason)."""
    refused = [line.split("\t")[-1].strip() for line in stdout.splitlines() if line.startswith("!")]
    if not refused:
        return _git_said(stderr + stdout)
    said = [line.removeprefix("remote:").strip() for line in stderr.splitlines() if line.startswith("remote:")]
    said = [line for line in said if line][-_REMOTE_LINES:]
    return _mask_credentials("; ".join([refused[-1], *said]))


def _git_said(text: str) -> str:
    """The line of git's error output that says what went wrong: its first ``fatal:`` or
    ``error:`` line (git often ends with advice, e.g. "...and the repository exists."), else its
    last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return redact(errors[0] if errors else lines[-1])
