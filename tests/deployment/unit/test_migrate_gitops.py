"""``forge-deployment migrate-gitops`` against a real GitOps repository: old-layout pointers move
to the per-part layout in exactly one commit, decided from each pointer's annotations."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from forge_deployment import domain
from forge_deployment.domain import NewDeployment, Release
from forge_deployment.gitops import Author, GitOpsRepository
from forge_deployment.migrate_gitops import plan_migration

NOW = dt.datetime(2026, 11, 25, 19, 0, tzinfo=dt.UTC)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def _pointer(environment: str, repository: str, project: str, number: int = 1) -> tuple[str, bytes]:
    release = Release(f"00000000-0000-4000-8000-00000000000{number}", repository, project, "a" * 40, number, "oci://r")
    deployment = NewDeployment.create(release, environment, "alice@acme.io", None, NOW)
    return domain.legacy_gitops_path(deployment.target), domain.release_pointer(deployment)


def _migrate(remote: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FORGE_GITOPS_URL": remote.as_uri(),
        "FORGE_DATA_DIR": str(tmp / "data"),
        "FORGE_OIDC_ISSUER": "http://127.0.0.1:9/realms/forge",
    }
    argv = [sys.executable, "-m", "forge_deployment", "migrate-gitops", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


async def test_migration_moves_every_pointer_in_one_commit(tmp_path: Path) -> None:
    remote = tmp_path / "gitops.git"
    repo = GitOpsRepository(remote.as_uri(), "main", tmp_path / "w", Author("Forge", "forge@forge.invalid"))
    await repo.open()
    old = dict(
        [
            _pointer("production", "acme/shop", "api", 1),
            _pointer("dev", "Acme/Web", "api-gateway", 2),
        ]
    )
    await repo.commit_changes(lambda _p: list(old.items()), "old layout\n", Author.of("ops"))
    await repo.commit_file("README.md", b"ops notes\n", "notes\n", Author.of("ops"))
    before = _git("--git-dir", str(remote), "rev-parse", "main").strip()

    dry = _migrate(remote, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 2 to move" in dry.stdout
    assert _git("--git-dir", str(remote), "rev-parse", "main").strip() == before

    done = _migrate(remote, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _git("--git-dir", str(remote), "rev-list", "--count", f"{before}..main").strip() == "1"
    files = set(_git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", "main").split())
    assert files == {
        "README.md",
        "environments/production/acme/shop/api/release.yaml",
        "environments/dev/acme/web/api-gateway/release.yaml",
    }
    moved = _git("--git-dir", str(remote), "show", "main:environments/dev/acme/web/api-gateway/release.yaml")
    assert moved.encode() == old["environments/dev/Acme/Web-api-gateway/release.yaml"]

    again = _migrate(remote, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate" in again.stdout


def test_a_pointer_already_in_the_new_layout_wins_and_foreign_files_stay() -> None:
    old_path, old_doc = _pointer("dev", "acme/shop", "api", 1)
    new_path = domain.gitops_path(domain.Target("dev", "acme/shop", "api"))
    foreign = "environments/dev/x/release.yaml"
    newer = _pointer("dev", "acme/shop", "api", 2)[1]
    plan = plan_migration({old_path: old_doc, new_path: newer, foreign: b"not a pointer"})
    assert plan.changes == [(old_path, None)]
    assert (plan.moved, plan.dropped, plan.skipped) == ([], [old_path], [foreign])
