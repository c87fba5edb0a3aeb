"""``python -m forge_deployment migrate-gitops``: move every release pointer of the GitOps
repository from the old ``environments/{env}/{owner}/{name}-{project}/release.yaml`` layout to
``environments/{env}/{owner}/{name}/{project}/release.yaml`` in one commit.

The target of a pointer is read from its own annotations (``forge.dev/environment``,
``forge.dev/repository``, ``forge.dev/project``), never from its old path, which is ambiguous:
that ambiguity is why the layout changed. A pointer already in the new layout wins over an old
one of the same target (it was written after the upgrade). The commit is made with the same
machinery as deployments (compare-and-swap or fetch/push, re-planned after a lost race), so it
is safe while the service runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

from forge_common.errors import InvalidRequest
from forge_common.settings import SettingsError, load

from . import domain
from .gitops import Author, Changes, GitError, GitOpsRepository, local_path, redact
from .settings import Settings

__all__ = ["MigrationPlan", "main", "plan_migration"]

PREFIX = "environments/"
MESSAGE = (
    "Move release pointers to environments/{env}/{owner}/{name}/{project}/release.yaml\n\n"
    "The old {owner}/{name}-{project} directories let two targets share one file.\n"
)


@dataclass
class MigrationPlan:
    changes: Changes = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # old pointers a new-layout one replaces
    skipped: list[str] = field(default_factory=list)  # release.yaml files that name no target


def plan_migration(files: dict[str, bytes]) -> MigrationPlan:
    plan = MigrationPlan()
    claimed: set[str] = set()
    for path in sorted(files):
        if not path.endswith("/release.yaml"):
            continue
        target = domain.pointer_target(files[path])
        if target is None:
            plan.skipped.append(path)
            continue
        try:
            new = domain.gitops_path(target)
        except InvalidRequest:
            plan.skipped.append(path)
            continue
        if new == path:
            continue
        plan.changes.append((path, None))
        if new in files or new in claimed:
            plan.dropped.append(path)
            continue
        claimed.add(new)
        plan.changes.append((new, files[path]))
        plan.moved.append((path, new))
    return plan


def _workdir(settings: Settings) -> Path:
    return Path(settings.gitops_workdir or Path(settings.data_dir).resolve() / "deployment" / "migrate-gitops")


async def _migrate(settings: Settings, dry_run: bool) -> int:
    workdir = _workdir(settings)
    repo = GitOpsRepository(
        settings.gitops_remote,
        settings.gitops_branch,
        workdir,
        Author(settings.gitops_committer_name, settings.gitops_committer_email),
        push_attempts=settings.gitops_push_attempts,
        remove_workdir=local_path(settings.gitops_remote) is None and not settings.gitops_workdir,
        timeout=settings.gitops_timeout,
        commit_timeout=settings.gitops_commit_timeout,
    )
    await repo.open()
    last: list[MigrationPlan] = []

    def plan(parent: str | None) -> Changes:
        last[:] = [plan_migration(repo.files(parent, PREFIX) if parent else {})]
        return [] if dry_run else last[0].changes

    try:
        if dry_run:
            head = await repo.fetch()
            plan(head)
            sha = None
        else:
            sha = await repo.commit_changes(plan, MESSAGE, repo.committer)
    finally:
        await repo.close()
    result = last[0] if last else MigrationPlan()
    for old, new in result.moved:
        print(f"move {old} -> {new}")  # noqa: T201 - a command's output
    for old in result.dropped:
        print(f"drop {old} (its target already has a pointer in the new layout)")  # noqa: T201
    for path in result.skipped:
        print(f"skip {path} (not a Forge release pointer)")  # noqa: T201
    where = redact(settings.gitops_remote)
    if dry_run:
        print(f"dry run: {len(result.moved)} to move, {len(result.dropped)} to drop in {where}")  # noqa: T201
    elif sha is None:
        print(f"nothing to migrate in {where}")  # noqa: T201
    else:
        print(f"migrated {len(result.moved)} pointers in {where} as commit {sha}")  # noqa: T201
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m forge_deployment migrate-gitops",
        description="Move release pointers to the per-part GitOps layout in one commit "
        "(FORGE_GITOPS_URL, FORGE_GITOPS_BRANCH and the other FORGE_GITOPS_* settings).",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would move, commit nothing")
    args = parser.parse_args(argv)
    try:
        settings = load(Settings)
    except SettingsError as exc:
        print(f"forge-deployment: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        return asyncio.run(_migrate(settings, args.dry_run))
    except GitError as exc:
        print(f"forge-deployment migrate-gitops: {exc}", file=sys.stderr)  # noqa: T201
        return 1
