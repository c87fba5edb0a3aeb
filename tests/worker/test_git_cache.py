"""The worker's git cache: a commit's files exported once per commit, the mirror fetched only
when it lacks the commit, a full SHA used without resolving it first (issue 11). Real git, a
real origin repository; git runs are counted through a wrapper script first on PATH."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge_worker.git import GitCache, GitError

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **ENV}, check=True, capture_output=True, text=True
    ).stdout


class Origin:
    """``root/acme/app.git`` pushed from a work tree; commits are added as a test goes."""

    def __init__(self, root: Path) -> None:
        self.work = root / "work"
        self.work.mkdir()
        _git("init", "-q", "-b", "main", cwd=self.work)
        self.bare = root / "acme" / "app.git"
        self.bare.parent.mkdir()
        _git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)

    def commit(self, files: dict[str, str], message: str = "c") -> str:
        for name, text in files.items():
            (self.work / name).parent.mkdir(parents=True, exist_ok=True)
            (self.work / name).write_text(text)
        _git("add", "-A", cwd=self.work)
        _git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        _git("push", "-q", str(self.bare), "HEAD:main", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work).strip()


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[Path]:
    """Every git the cache runs from now on is logged (its subcommand) to the returned file."""
    real = subprocess.run(["sh", "-c", "command -v git"], check=True, capture_output=True, text=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "git-runs.log"
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    before = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}:{before}"
    log.touch()
    try:
        yield log
    finally:
        os.environ["PATH"] = before


SUBCOMMANDS = {"init", "remote", "fetch", "rev-parse", "read-tree", "checkout-index", "checkout", "ls-tree", "worktree"}


def _runs(log: Path) -> list[str]:
    """The git subcommand of each run, in order."""
    return [next((w for w in line.split() if w in SUBCOMMANDS), line) for line in log.read_text().splitlines()]


def test_a_new_full_sha_is_fetched_then_exported_and_a_second_checkout_runs_no_git(
    tmp_path: Path, counted: Path
) -> None:
    origin = Origin(tmp_path)
    first = origin.commit({"a.txt": "one\n", "sub/.forge/project.toml": 'name = "x"\n'})
    cache = GitCache(tmp_path / "cache", tmp_path.as_uri() + "/{repository}.git")

    full, path = asyncio.run(cache.checkout("acme/app", first.upper()))
    assert full == first
    assert (path / "a.txt").read_text() == "one\n"
    assert (path / "sub" / ".forge" / "project.toml").exists()
    assert "fetch" in _runs(counted)

    # Another worker process sharing the cache (a new GitCache): the commit's files are there.
    counted.write_text("")
    again, same = asyncio.run(
        GitCache(tmp_path / "cache", tmp_path.as_uri() + "/{repository}.git").checkout("acme/app", first)
    )
    assert (again, same) == (first, path)
    assert _runs(counted) == []


def test_a_commit_already_in_the_mirror_is_exported_by_one_git_command(tmp_path: Path, counted: Path) -> None:
    origin = Origin(tmp_path)
    first = origin.commit({"a.txt": "one\n"})
    second = origin.commit({"a.txt": "two\n"})
    cache = GitCache(tmp_path / "cache", tmp_path.as_uri() + "/{repository}.git")
    asyncio.run(cache.checkout("acme/app", first))  # fetches both commits

    counted.write_text("")
    full, path = asyncio.run(cache.checkout("acme/app", second))
    assert full == second
    assert (path / "a.txt").read_text() == "two\n"
    assert _runs(counted) == ["checkout"]


def test_a_commit_pushed_after_the_mirror_was_made_is_fetched(tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    cache = GitCache(tmp_path / "cache", tmp_path.as_uri() + "/{repository}.git")
    asyncio.run(cache.checkout("acme/app", origin.commit({"a.txt": "one\n"})))
    later = origin.commit({"a.txt": "later\n"})
    _, path = asyncio.run(cache.checkout("acme/app", later))
    assert (path / "a.txt").read_text() == "later\n"


def test_short_shas_unknown_shas_and_non_commits(tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    sha = origin.commit({"a.txt": "one\n"})
    cache = GitCache(tmp_path / "cache", tmp_path.as_uri() + "/{repository}.git")

    full, path = asyncio.run(cache.checkout("acme/app", sha[:10]))
    assert full == sha
    assert (path / "a.txt").read_text() == "one\n"

    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(GitError, match=f"commit {missing} not found in acme/app"):
        asyncio.run(cache.checkout("acme/app", missing))
    # A tree's or a blob's object name is not a commit.
    tree = _git("rev-parse", f"{sha}^{{tree}}", cwd=origin.work).strip()
    with pytest.raises(GitError, match="not found"):
        asyncio.run(cache.checkout("acme/app", tree))
    assert not any((tmp_path / "cache" / "checkouts").glob(f"*/{tree}/.forge-checkout-complete"))


def test_a_commit_with_an_empty_tree_checks_out_empty(tmp_path: Path) -> None:
    origin = Origin(tmp_path)
    empty = origin.commit({}, "nothing yet")
    cache = GitCache(tmp_path / "cache", tmp_path.as_uri() + "/{repository}.git")
    full, path = asyncio.run(cache.checkout("acme/app", empty))
    assert full == empty
    assert [p.name for p in path.iterdir()] == [".forge-checkout-complete"]
