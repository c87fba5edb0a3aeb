"""GitOpsRepository against real git repositories on disk (no service, no database)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from forge_deployment.gitops import Author, GitError, GitOpsRepository, GitTimeout, redact


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


async def _open(remote: Path, workdir: Path, use_cli: bool = False) -> GitOpsRepository:
    repo = GitOpsRepository(remote.as_uri(), "main", workdir, Author("Forge", "forge@forge.invalid"), use_cli=use_cli)
    await repo.open()
    return repo


@pytest.mark.parametrize("use_cli", [False, True], ids=["local", "cli"])
async def test_creates_missing_embedded_repository_and_lands_one_commit(tmp_path: Path, use_cli: bool) -> None:
    remote = tmp_path / "gitops.git"
    repo = await _open(remote, tmp_path / "w1", use_cli)
    assert (remote / "HEAD").exists()
    assert await repo.fetch() is None  # empty repository: no branch yet

    sha = await repo.commit_file(
        "environments/dev/a/b-api/release.yaml", b"one\n", "Deploy one\n", Author.of("alice@x.io")
    )

    assert _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip() == sha
    assert _git("--git-dir", str(remote), "show", f"{sha}:environments/dev/a/b-api/release.yaml") == "one\n"
    log = _git("--git-dir", str(remote), "log", "--format=%an <%ae>|%cn|%s", "main")
    assert log.strip() == "alice@x.io <alice@x.io>|Forge|Deploy one"


async def test_concurrent_writers_in_several_replicas_never_lose_a_commit(tmp_path: Path) -> None:
    remote = tmp_path / "gitops.git"
    # Two in-process writers and one pushing with the git CLI, all racing on one branch.
    replicas = [await _open(remote, tmp_path / f"w{i}", use_cli=i == 2) for i in range(3)]

    async def deploy(i: int) -> str:
        repo = replicas[i % len(replicas)]
        return await repo.commit_file(
            f"environments/dev/o/r-p{i}/release.yaml", f"{i}\n".encode(), f"Deploy {i}\n", Author.of("bob")
        )

    shas = await asyncio.gather(*(deploy(i) for i in range(30)))

    assert len(set(shas)) == 30
    history = _git("--git-dir", str(remote), "rev-list", "main").split()
    assert set(shas) <= set(history)
    assert len(history) == 30  # one commit per deployment, nothing else
    tree = _git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", "main").split()
    assert sorted(tree) == sorted(f"environments/dev/o/r-p{i}/release.yaml" for i in range(30))
    for i in (0, 17, 29):
        content = _git("--git-dir", str(remote), "show", f"main:environments/dev/o/r-p{i}/release.yaml")
        assert content == f"{i}\n"


@pytest.mark.parametrize("use_cli", [False, True], ids=["local", "cli"])
async def test_reads_files_and_ancestry(tmp_path: Path, use_cli: bool) -> None:
    remote = tmp_path / "gitops.git"
    repo = await _open(remote, tmp_path / "w", use_cli)
    first = await repo.commit_file("f.yaml", b"1\n", "one\n", Author.of("a"))
    second = await repo.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))
    assert await repo.read_file(first, "f.yaml") == b"1\n"
    assert await repo.read_file(second, "f.yaml") == b"2\n"
    assert await repo.read_file(second, "missing.yaml") is None
    assert await repo.read_file(second, "f.yaml/below") is None
    assert await repo.fetch() == second
    assert await repo.is_ancestor(first, second)
    assert not await repo.is_ancestor(second, first)
    assert await repo.has_commit(second)
    assert not await repo.has_commit("0" * 40)


async def test_unreachable_remote_is_a_git_error_without_credentials(tmp_path: Path) -> None:
    repo = GitOpsRepository(
        "https://user:s3cret@127.0.0.1:1/gitops.git", "main", tmp_path / "w", Author("F", "f@x"), push_attempts=2
    )
    await repo.open()
    with pytest.raises(GitError) as err:
        await repo.commit_file("f.yaml", b"1\n", "m\n", Author.of("a"))
    assert "s3cret" not in str(err.value)
    assert redact("https://user:s3cret@host:8443/x.git") == "https://***@host:8443/x.git"


async def test_a_missing_remote_repository_is_named_not_git_s_advice(tmp_path: Path) -> None:
    remote = tmp_path / "gitops.git"
    repo = await _open(remote, tmp_path / "w", use_cli=True)
    await repo.commit_file("f.yaml", b"1\n", "one\n", Author.of("a"))
    shutil.rmtree(remote)
    with pytest.raises(GitError) as err:
        await repo.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))
    # git ends with "Please make sure you have the correct access rights / and the repository exists."
    assert "does not appear to be a git repository" in str(err.value)
    assert "and the repository exists" not in str(err.value)


async def test_a_refused_push_says_why_in_git_s_and_the_remote_s_words(tmp_path: Path) -> None:
    remote = tmp_path / "gitops.git"
    repo = await _open(remote, tmp_path / "w", use_cli=True)
    first = await repo.commit_file("f.yaml", b"1\n", "one\n", Author.of("a"))
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        'echo "gitops policy: pushes are frozen" >&2\n'
        'echo "ask https://bot:tok3n-secret@git.example/ops" >&2\n'
        "exit 1\n"
    )
    hook.chmod(0o755)

    with pytest.raises(GitError) as err:
        await repo.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))

    # Not git's last line of porcelain output ("Done"): the refused ref's status and the hook's reason.
    message = str(err.value)
    assert message.startswith(f"pushing to {remote.as_uri()} failed: [remote rejected] (pre-receive hook declined)")
    assert "gitops policy: pushes are frozen" in message
    assert "https://***@git.example/ops" in message
    assert "tok3n-secret" not in message
    assert _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip() == first


# A remote whose hook never finishes (until git's process group is killed at the deadline).
HUNG_HOOK = "#!/bin/sh\nexec sleep 300\n"


def _hook(remote: Path, name: str, script: str) -> None:
    hook = remote / "hooks" / name
    hook.write_text(script)
    hook.chmod(0o755)


async def _slow_remote(tmp_path: Path) -> tuple[Path, GitOpsRepository, str]:
    """A remote pushed to with the git CLI, one commit on it already; pushes time out after 2s."""
    remote = tmp_path / "gitops.git"
    repo = GitOpsRepository(
        remote.as_uri(), "main", tmp_path / "w", Author("Forge", "forge@forge.invalid"), use_cli=True, timeout=2.0
    )
    await repo.open()
    first = await repo.commit_file("f.yaml", b"1\n", "one\n", Author.of("a"))
    return remote, repo, first


async def test_a_push_that_lands_but_answers_late_is_a_landed_commit(tmp_path: Path) -> None:
    remote, repo, first = await _slow_remote(tmp_path)
    # The branch moves, then the remote keeps the pusher waiting (a slow post-receive hook).
    _hook(remote, "post-receive", HUNG_HOOK)

    sha = await repo.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))

    assert _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip() == sha
    assert _git("--git-dir", str(remote), "rev-parse", f"{sha}^").strip() == first
    assert await repo.fetch() == sha


async def test_a_push_that_times_out_before_the_branch_moved_is_a_timeout(tmp_path: Path) -> None:
    remote, repo, first = await _slow_remote(tmp_path)
    # The remote never decides whether to take the push (a hung pre-receive hook).
    _hook(remote, "pre-receive", HUNG_HOOK)

    with pytest.raises(GitTimeout) as err:
        await repo.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))

    assert err.value.operation == "pushing to"
    assert err.value.unconfirmed_commit is None
    assert str(err.value) == (
        f"pushing to {remote.as_uri()} did not finish within 2s; "
        "the branch did not hold the commit when the remote was asked afterwards"
    )
    assert _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip() == first


async def test_a_push_that_timed_out_and_a_remote_that_cannot_be_asked_may_have_landed(tmp_path: Path) -> None:
    remote, repo, _ = await _slow_remote(tmp_path)
    # Pushes still reach the remote; fetches (the question "did it land?") no longer do.
    _git("--git-dir", str(tmp_path / "w"), "config", "remote.origin.pushurl", remote.as_uri())
    _git("--git-dir", str(tmp_path / "w"), "config", "remote.origin.url", (tmp_path / "gone.git").as_uri())
    _hook(remote, "post-receive", HUNG_HOOK)

    with pytest.raises(GitTimeout) as err:
        await repo.commit_file("f.yaml", b"2\n", "two\n", Author.of("a"))

    landed = _git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip()
    assert err.value.unconfirmed_commit == landed
    assert err.value.operation == "pushing to"
    assert str(err.value).startswith(
        f"pushing to {remote.as_uri()} did not finish within 2s; commit {landed} may have landed: "
        "asking the remote afterwards failed too (fetching "
    )
