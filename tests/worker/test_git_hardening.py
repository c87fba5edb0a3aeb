"""The worker's git cache runs no repository hooks or configured programs, and its errors carry
no credentials from FORGE_GIT_URL_TEMPLATE (issue 12, items 4 and 6). Real git throughout."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from forge_worker.git import GitCache, GitError


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@x"
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _origin(root: Path) -> tuple[Path, list[str]]:
    """``root/acme/app.git`` with two commits on main; their SHAs."""
    work = root / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    shas = []
    for n in (1, 2):
        (work / "file.txt").write_text(f"version {n}\n")
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", f"v{n}", cwd=work)
        shas.append(_git("rev-parse", "HEAD", cwd=work).strip())
    bare = root / "acme" / "app.git"
    bare.parent.mkdir()
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare, shas


def test_hooks_and_fsmonitor_planted_in_a_mirror_never_run(tmp_path: Path) -> None:
    _, shas = _origin(tmp_path)
    cache = GitCache(tmp_path / "cache", (tmp_path.as_uri()) + "/{repository}.git")
    asyncio.run(cache.checkout("acme/app", shas[0]))
    # What a step could do if it reached the cache: hooks in the mirror, and a configuration
    # pointing git at programs of its own.
    mirror = cache.mirror_path("acme/app")
    marker = tmp_path / "pwned"
    program = tmp_path / "evil.sh"
    program.write_text(f"#!/bin/sh\necho ran >> {marker}\n")
    program.chmod(0o755)
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    for name in ("post-checkout", "reference-transaction", "pre-auto-gc", "post-index-change"):
        (mirror / "hooks" / name).write_text(program.read_text())
        (mirror / "hooks" / name).chmod(0o755)
        (hooks / name).write_text(program.read_text())
        (hooks / name).chmod(0o755)
    _git("--git-dir", str(mirror), "config", "core.hooksPath", str(hooks), cwd=tmp_path)
    _git("--git-dir", str(mirror), "config", "core.fsmonitor", str(program), cwd=tmp_path)

    full, path = asyncio.run(cache.checkout("acme/app", shas[1]))
    asyncio.run(cache.list_files("acme/app", full))

    assert (path / "file.txt").read_text() == "version 2\n"
    assert not marker.exists(), "a hook or fsmonitor program planted in the mirror ran"


def test_errors_name_the_repository_without_the_template_credentials(tmp_path: Path) -> None:
    token = "ghp_s3cr3tTokenValue123"
    # Nothing listens on port 9 of localhost: the fetch fails, and git's message quotes the URL.
    cache = GitCache(tmp_path / "cache", f"http://x-access-token:{token}@127.0.0.1:9/{{repository}}.git")
    with pytest.raises(GitError) as info:
        asyncio.run(cache.resolve("acme/app", "0" * 40))
    message = str(info.value)
    assert "acme/app" in message
    assert "127.0.0.1:9" in message
    assert token not in message
    assert "x-access-token" not in message
