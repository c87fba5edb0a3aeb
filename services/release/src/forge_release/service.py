"""Use cases of the release service. Each one owns its transaction.

Creating a release, in one transaction:
1. bump the project's counter (row lock: creates of one project are serialised, numbers are
   gap-free because a rollback also rolls the increment back);
2. refuse a second release of the same commit (409 with the existing id);
3. write the release, trigger, artifacts, aliases and the ``release.created`` outbox row;
4. publish the OCI artifact, last, still inside the transaction;
5. commit.

If publishing fails the transaction rolls back: no row, no number used, no event. If the
process dies after publishing but before the commit, the registry holds a tag with no release
behind it; the retry (same repository, project and commit) publishes again to the same tag,
replacing it, and commits: the retry converges, and a committed release's tag always points at
the manifest whose digest the release records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from prometheus_client import Counter

from forge_common import cursor, github
from forge_common.db import Pool
from forge_common.errors import Conflict, InvalidRequest, NotFound
from forge_common.events import ReleaseCreated, isoformat, utcnow
from forge_common.outbox import add_event
from forge_common.repositories import RepositoryAllowList

from . import store
from .domain import (
    AliasRow,
    ArtifactFields,
    NewRelease,
    classify_identifier,
    creation_aliases,
    decide_alias,
    decide_alias_removal,
    subject_id,
    validate_alias_name,
    validate_project,
    validate_repository,
)
from .github import release_status
from .oci import Publisher, build_artifact
from .runs import RunChecker, SkipRunCheck

__all__ = ["CreateRelease", "ReleaseService"]

log = structlog.get_logger(__name__)

# Counted after the release's transaction committed (a duplicate or a failed publish is not).
RELEASES_CREATED = Counter("forge_releases_created_total", "Releases created")

SCHEMA = "release"
MAX_CANDIDATES = 10


def release_body(row: dict[str, Any]) -> dict[str, Any]:
    """The Get Release shape of the spec (plus ``pipeline_run_id``, ``trigger.tag`` and the stable
    identities ``created_by_id`` and ``triggered_by_id``, of ``created_by`` and
    ``trigger.triggered_by``)."""
    return {
        "id": row["id"],
        "repository": row["repository"],
        "project": row["project"],
        "commit_sha": row["commit_sha"],
        "release_number": int(row["release_number"]),
        "oci_uri": row["oci_uri"],
        "oci_digest": row["oci_digest"],
        "created_at": isoformat(row["created_at"]),
        "created_by": row["created_by"],
        "created_by_id": row["created_by_id"],
        "triggered_by_id": row["triggered_by_id"],
        "pipeline_run_id": row["pipeline_run_id"],
        "artifacts": row["artifacts"],
        "aliases": row["aliases"],
        "trigger": {
            "trigger_type": row["trigger_type"],
            "branch": row["branch"],
            "tag": row["tag"],
            "triggered_by": row["triggered_by"],
        },
    }


@dataclass(frozen=True)
class CreateRelease:
    """``POST /v1/releases`` as the caller sent it; :meth:`ReleaseService.create` validates it."""

    repository: str
    project: str
    commit_sha: str
    pipeline_run_id: str | None
    # (name, type, tracking_oci_uri, primary_published_uri, digest, size) per artifact
    artifacts: list[ArtifactFields]
    # (trigger_type, branch, tag); None is a manual release
    trigger: tuple[str, str | None, str | None] | None
    created_by: str
    service_account: bool
    token: str = field(repr=False)  # forwarded to the pipeline service
    on_behalf_of: str | None = None  # trigger.triggered_by as sent
    subject: str = ""  # the caller's token subject: created_by's stable identity
    on_behalf_of_id: str | None = None  # trigger.triggered_by_id as sent (with on_behalf_of)


class _ProjectLocks:
    """In-process queue per project in front of the database row lock.

    Creates of one project are serialised by the counter row lock anyway; queueing them here
    first means a burst for one hot project waits without holding pooled connections, so
    requests for everything else still find a free connection. (Across replicas the row lock
    alone does the job.)
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, repository: str, project: str) -> asyncio.Lock:
        key = (repository.lower(), project.lower())
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock


def _triggered_by(cmd: CreateRelease) -> str | None:
    """Whom the release is for: honoured from service accounts only (a worker creates releases
    on behalf of whoever pushed); users are always their own trigger."""
    if not cmd.service_account or cmd.trigger is None or not cmd.on_behalf_of:
        return None
    who = cmd.on_behalf_of.strip()
    if not who or len(who) > 255:
        raise InvalidRequest("trigger.triggered_by must be 1..255 characters", {"field": "trigger.triggered_by"})
    return who


class ReleaseService:
    def __init__(
        self,
        pool: Pool,
        publisher: Publisher,
        runs: RunChecker | None = None,
        repositories: RepositoryAllowList | None = None,
    ) -> None:
        self.pool = pool
        self.repositories = repositories or RepositoryAllowList()
        self.publisher = publisher
        self.runs: RunChecker = runs or SkipRunCheck()
        self._project_lock = _ProjectLocks()

    # --- create --------------------------------------------------------------------------------

    async def create(self, cmd: CreateRelease) -> dict[str, Any]:
        self.repositories.check(cmd.repository)
        release = NewRelease.parse(
            repository=cmd.repository,
            project=cmd.project,
            commit_sha=cmd.commit_sha,
            pipeline_run_id=cmd.pipeline_run_id,
            artifacts=cmd.artifacts,
            trigger=cmd.trigger,
            created_by=cmd.created_by,
            now=utcnow(),
            triggered_by=_triggered_by(cmd),
            created_by_id=subject_id(cmd.subject) if cmd.subject else None,
            triggered_by_id=cmd.on_behalf_of_id if cmd.service_account else None,
        )
        return await self.create_release(release, cmd.token)

    async def create_release(self, release: NewRelease, token: str = "") -> dict[str, Any]:
        if release.pipeline_run_id is not None:
            # Before the project lock: a slow pipeline service must not hold up other creates.
            await self.runs.check(release.pipeline_run_id, release.repository, release.commit_sha, token)
        try:
            async with self._project_lock(release.repository, release.project):
                return await self._create(release)
        except psycopg.errors.UniqueViolation:
            # Only reachable if the project lock were bypassed; report it as the duplicate it is.
            async with self.pool.connection() as conn:
                existing = await store.find_by_commit(conn, release.repository, release.project, release.commit_sha)
            raise Conflict(
                f"a release of {release.repository}/{release.project} at {release.commit_sha} already exists",
                {"existing_id": existing["id"] if existing else None},
            ) from None

    async def _create(self, release: NewRelease) -> dict[str, Any]:
        async with self.pool.connection() as conn, conn.transaction():
            number, repository, project = await store.bump_counter(conn, release.repository, release.project)
            # Names are case-insensitive and shown as first given: this release uses that spelling.
            release = dataclasses.replace(release, repository=repository, project=project)
            wanted = creation_aliases(release.trigger, number)
            existing, held = await store.existing_and_aliases(
                conn, release.repository, release.project, release.commit_sha, [a for a, _ in wanted]
            )
            if existing is not None:
                raise Conflict(
                    f"a release of {release.repository}/{release.project} at commit {release.commit_sha} already exists",
                    {"existing_id": existing["id"], "release_number": int(existing["release_number"])},
                )
            aliases = self._creation_aliases(release, wanted, held)
            artifact = build_artifact(release, number)
            oci_uri = self.publisher.uri(release.repository, release.project, release.commit_sha)
            await store.insert_release(conn, release, number, oci_uri, artifact.digest, aliases)
            await add_event(
                conn,
                SCHEMA,
                ReleaseCreated(
                    release_id=release.id,
                    repository=release.repository,
                    project=release.project,
                    commit_sha=release.commit_sha,
                    release_number=number,
                    trigger_type=release.trigger.trigger_type,
                ),
            )
            await github.enqueue(conn, SCHEMA, release_status(release, number))
            # Last step before the commit: a failed publish rolls everything back.
            digest = await self.publisher.publish(artifact)
        RELEASES_CREATED.inc()
        log.info(
            "release.created",
            release_id=release.id,
            repository=release.repository,
            project=release.project,
            release_number=number,
            oci_digest=digest,
        )
        return {
            "id": release.id,
            "release_number": number,
            "oci_uri": oci_uri,
            "oci_digest": digest,
            "canonical_id": release.canonical_id,
            "created_at": isoformat(release.created_at),
        }

    @staticmethod
    def _creation_aliases(
        release: NewRelease, wanted: Sequence[tuple[str, str]], current: dict[str, AliasRow]
    ) -> list[tuple[str, str]]:
        result: list[tuple[str, str]] = []
        for alias, alias_type in wanted:
            held = current.get(alias)
            if held is None:
                result.append((alias, alias_type))
            elif alias_type == "tag":
                raise Conflict(
                    f"tag {alias!r} already names release {held.release_number} of {release.repository}/{release.project}; "
                    "tags never move",
                    # Not "existing_id": that names the release of the same commit (a duplicate).
                    {
                        "alias": alias,
                        "alias_type": "tag",
                        "release_id": held.release_id,
                        "release_number": held.release_number,
                    },
                )
            elif alias_type == "branch" and held.alias_type == "branch":
                result.append((alias, alias_type))  # the branch's newest release is this one
            else:
                log.warning(
                    "release.branch_alias_skipped", alias=alias, held_by=held.release_id, held_as=held.alias_type
                )
        return result

    # --- read ----------------------------------------------------------------------------------

    async def get_by_id(self, release_id: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            row = await store.release_by_id(conn, release_id)
        if row is None:
            raise NotFound(f"release {release_id} not found", {"release_id": release_id})
        return release_body(row)

    async def get(self, repository: str, project: str, raw_id: str) -> dict[str, Any]:
        validate_repository(repository)
        validate_project(project)
        async with self.pool.connection() as conn:
            row = await self._resolve(conn, repository, project, raw_id)
        return release_body(row)

    async def _resolve(self, conn: store.Conn, repository: str, project: str, raw_id: str) -> dict[str, Any]:
        """``{release-id}``: commit SHA (full or >= 7 hex characters), release number, then
        alias (a tag, or any other alias). An ambiguous SHA prefix is a 409 with candidates."""
        ident = classify_identifier(raw_id)
        if ident.sha_prefix is not None:
            matches = await store.release_by_sha_prefix(conn, repository, project, ident.sha_prefix)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                found = await store.releases_by_sha_prefix(
                    conn, repository, project, ident.sha_prefix, MAX_CANDIDATES + 1
                )
                raise Conflict(
                    f"commit SHA prefix {raw_id!r} matches several releases of {repository}/{project}; give more characters",
                    {
                        "release_id": raw_id,
                        "candidates": [
                            {"id": r["id"], "commit_sha": r["commit_sha"], "release_number": int(r["release_number"])}
                            for r in found[:MAX_CANDIDATES]
                        ],
                        "more_candidates": len(found) > MAX_CANDIDATES,
                    },
                )
        if ident.number is not None:
            row = await store.release_by_number(conn, repository, project, ident.number)
            if row is not None:
                return row
        row = await store.release_by_alias(conn, repository, project, raw_id)
        if row is not None:
            return row
        raise NotFound(
            f"no release of {repository}/{project} matches {raw_id!r} (commit SHA, release number, tag or alias)",
            {"repository": repository, "project": project, "release_id": raw_id},
        )

    async def list_releases(
        self, repository: str, project: str, limit: int, offset: int, page_cursor: str | None = None
    ) -> dict[str, Any]:
        validate_repository(repository)
        validate_project(project)
        scope = cursor.fingerprint("releases", repository=repository.lower(), project=project.lower())
        below = None
        if page_cursor is not None:
            if offset:
                raise InvalidRequest("cursor and offset cannot be combined", {"field": "cursor"})
            key = cursor.decode(page_cursor, scope)
            if len(key) != 1 or not isinstance(key[0], int):
                raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"})
            below = key[0]
        async with self.pool.connection() as conn:
            total, rows = await store.count_and_page(conn, repository, project, limit + 1, offset, below)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "releases": [
                {
                    "id": r["id"],
                    "commit_sha": r["commit_sha"],
                    "release_number": int(r["release_number"]),
                    "created_at": isoformat(r["created_at"]),
                }
                for r in rows
            ],
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_cursor": cursor.encode(scope, [int(rows[-1]["release_number"])]) if more else None,
        }

    # --- aliases -------------------------------------------------------------------------------

    async def add_alias(
        self, repository: str, project: str, raw_id: str, alias: str, alias_type: str
    ) -> tuple[int, dict[str, Any]]:
        validate_repository(repository)
        validate_project(project)
        validate_alias_name(alias)
        async with self._project_lock(repository, project), self.pool.connection() as conn, conn.transaction():
            await self._lock_or_404(conn, repository, project, raw_id)
            target = await self._resolve(conn, repository, project, raw_id)
            held: AliasRow | None = (await store.get_aliases(conn, repository, project, [alias])).get(alias)
            action = decide_alias(held, target["id"], int(target["release_number"]), alias_type)
            if action == "create":
                await store.put_alias(conn, repository, project, alias, target["id"], alias_type)
            elif action == "move":
                await store.move_alias(conn, repository, project, alias, target["id"])
        body = {
            "alias": alias,
            "alias_type": alias_type,
            "release_id": target["id"],
            "release_number": int(target["release_number"]),
            "moved_from": held.release_id if action == "move" and held is not None else None,
        }
        log.info("release.alias_set", alias=alias, alias_type=alias_type, release_id=target["id"], action=action)
        return (200 if action == "noop" else 201), body

    async def remove_alias(self, repository: str, project: str, raw_id: str, alias: str) -> None:
        validate_repository(repository)
        validate_project(project)
        async with self._project_lock(repository, project), self.pool.connection() as conn, conn.transaction():
            await self._lock_or_404(conn, repository, project, raw_id)
            target = await self._resolve(conn, repository, project, raw_id)
            held = (await store.get_aliases(conn, repository, project, [alias])).get(alias)
            decide_alias_removal(held, target["id"], alias)
            await store.delete_alias(conn, repository, project, alias)
        log.info("release.alias_removed", alias=alias, release_id=target["id"])

    async def _lock_or_404(self, conn: store.Conn, repository: str, project: str, raw_id: str) -> None:
        # Alias changes take the same per-project lock as creates, so a branch alias moved by a
        # new release and one moved by hand never interleave.
        if not await store.lock_project(conn, repository, project):
            raise NotFound(
                f"no release of {repository}/{project} matches {raw_id!r}",
                {"repository": repository, "project": project, "release_id": raw_id},
            )
