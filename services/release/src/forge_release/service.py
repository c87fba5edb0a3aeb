"""Use cases of the release service; reached from HTTP (api.py).

Creating a release, in one transaction (:meth:`ReleaseService.create_release`):
1. bump the project's counter (row lock: creates of one project are serialised, numbers are
   gap-free because a rollback also rolls the increment back);
2. read the release of the same commit and the holders of the new aliases, and let the domain
   decide (:func:`forge_release.domain.create`: 409 for a duplicate or a taken tag);
3. write the release, trigger, artifacts and aliases, record ``release.created`` and queue the
   commit status, all in the unit of work's transaction;
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
import datetime as dt
import uuid
import weakref
from dataclasses import dataclass, field

import psycopg
import structlog
from prometheus_client import Counter

from forge_common import cursor
from forge_common.errors import Conflict, InvalidRequest, NotFound
from forge_common.events import utcnow
from forge_common.repositories import RepositoryAllowList
from forge_common.search import page_limit, query_text, release_scope

from . import domain
from .domain import (
    AliasChange,
    ArtifactFields,
    CreatedRelease,
    NewRelease,
    Release,
    ReleaseKey,
    ReleasePage,
    SearchPage,
    SearchQuery,
)
from .github import release_status
from .oci import Publisher, build_artifact
from .runs import RunChecker, SkipRunCheck
from .store import PgReleases, UnitOfWork

__all__ = ["CreateRelease", "ReleaseService"]

log = structlog.get_logger(__name__)

# Counted after the release's transaction committed (a duplicate or a failed publish is not).
RELEASES_CREATED = Counter("forge_releases_created_total", "Releases created")

MAX_CANDIDATES = 10


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
        uow: UnitOfWork,
        publisher: Publisher,
        runs: RunChecker | None = None,
        repositories: RepositoryAllowList | None = None,
    ) -> None:
        self.uow = uow
        self.repositories = repositories or RepositoryAllowList()
        self.publisher = publisher
        self.runs: RunChecker = runs or SkipRunCheck()
        self._project_lock = _ProjectLocks()

    # --- create --------------------------------------------------------------------------------

    async def create(self, cmd: CreateRelease) -> CreatedRelease:
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
            created_by_id=domain.subject_id(cmd.subject) if cmd.subject else None,
            triggered_by_id=cmd.on_behalf_of_id if cmd.service_account else None,
        )
        return await self.create_release(release, cmd.token)

    async def create_release(self, release: NewRelease, token: str = "") -> CreatedRelease:
        if release.pipeline_run_id is not None:
            # Before the project lock: a slow pipeline service must not hold up other creates.
            await self.runs.check(release.pipeline_run_id, release.repository, release.commit_sha, token)
        try:
            async with self._project_lock(release.repository, release.project):
                return await self._create(release)
        except psycopg.errors.UniqueViolation:
            # Only reachable if the project lock were bypassed; report it as the duplicate it is.
            async with self.uow.read() as releases:
                existing = await releases.find_by_commit(release.repository, release.project, release.commit_sha)
            raise Conflict(
                f"a release of {release.repository}/{release.project} at {release.commit_sha} already exists",
                {"existing_id": existing.id if existing else None},
            ) from None

    async def _create(self, release: NewRelease) -> CreatedRelease:
        async with self.uow.begin() as tx:
            counter = await tx.releases.bump_counter(release.repository, release.project)
            wanted = [alias for alias, _ in domain.creation_aliases(release.trigger, counter.number)]
            existing, held = await tx.releases.existing_and_aliases(
                counter.repository, counter.project, release.commit_sha, wanted
            )
            oci_uri = self.publisher.uri(counter.repository, counter.project, release.commit_sha)
            created, event = domain.create(release, counter, existing, held, oci_uri)
            artifact = build_artifact(created.release, created.number)
            created = dataclasses.replace(created, oci_digest=artifact.digest)
            await tx.releases.insert(created)
            await tx.record(event)
            await tx.report_to_github(release_status(created.release, created.number))
            # Last step before the commit: a failed publish rolls everything back.
            await self.publisher.publish(artifact)
        RELEASES_CREATED.inc()
        for holder in created.skipped:
            log.warning(
                "release.branch_alias_skipped",
                alias=holder.alias,
                held_by=holder.release_id,
                held_as=holder.alias_type,
            )
        log.info(
            "release.created",
            release_id=created.id,
            repository=created.release.repository,
            project=created.release.project,
            release_number=created.number,
            oci_digest=created.oci_digest,
        )
        return created

    # --- read ----------------------------------------------------------------------------------

    async def get_by_id(self, release_id: str) -> Release:
        async with self.uow.read() as releases:
            release = await releases.by_id(release_id)
        if release is None:
            raise NotFound(f"release {release_id} not found", {"release_id": release_id})
        return release

    async def get(self, repository: str, project: str, raw_id: str) -> Release:
        domain.validate_repository(repository)
        domain.validate_project(project)
        async with self.uow.read() as releases:
            return await self._resolve(releases, repository, project, raw_id)

    async def _resolve(self, releases: PgReleases, repository: str, project: str, raw_id: str) -> Release:
        """``{release-id}``: commit SHA (full or >= 7 hex characters), release number, then
        alias (a tag, or any other alias). An ambiguous SHA prefix is a 409 with candidates."""
        ident = domain.classify_identifier(raw_id)
        if ident.sha_prefix is not None:
            matches = await releases.by_sha_prefix(repository, project, ident.sha_prefix)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                found = await releases.summaries_by_sha_prefix(
                    repository, project, ident.sha_prefix, MAX_CANDIDATES + 1
                )
                raise Conflict(
                    f"commit SHA prefix {raw_id!r} matches several releases of {repository}/{project}; give more characters",
                    {
                        "release_id": raw_id,
                        "candidates": [
                            {"id": r.id, "commit_sha": r.commit_sha, "release_number": r.release_number}
                            for r in found[:MAX_CANDIDATES]
                        ],
                        "more_candidates": len(found) > MAX_CANDIDATES,
                    },
                )
        if ident.number is not None:
            found_by_number = await releases.by_number(repository, project, ident.number)
            if found_by_number is not None:
                return found_by_number
        found_by_alias = await releases.by_alias(repository, project, raw_id)
        if found_by_alias is not None:
            return found_by_alias
        raise NotFound(
            f"no release of {repository}/{project} matches {raw_id!r} (commit SHA, release number, tag or alias)",
            {"repository": repository, "project": project, "release_id": raw_id},
        )

    async def list_releases(
        self, repository: str, project: str, limit: int, offset: int, page_cursor: str | None = None
    ) -> ReleasePage:
        domain.validate_repository(repository)
        domain.validate_project(project)
        scope = _list_scope(repository, project)
        below = None
        if page_cursor is not None:
            if offset:
                raise InvalidRequest("cursor and offset cannot be combined", {"field": "cursor"})
            key = cursor.decode(page_cursor, scope)
            if len(key) != 1 or not isinstance(key[0], int):
                raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"})
            below = key[0]
        async with self.uow.read() as releases:
            total, rows = await releases.count_and_page(repository, project, limit + 1, offset, below)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = cursor.encode(scope, [rows[-1].release_number]) if more else None
        return ReleasePage(tuple(rows), total, limit, offset, next_cursor)

    async def search(
        self, q: str | None, repository: str | None, limit: str | None, page_cursor: str | None
    ) -> SearchPage:
        """``GET /v1/releases/search`` (docs/api-search.md): releases by commit prefix, branch,
        tag, alias or author, newest first, paged by an opaque cursor bound to the query."""
        text = query_text(q)
        if repository is not None:
            domain.validate_repository(repository)
        size = page_limit(limit)
        # The pipeline service's GET /v1/search makes cursors of this scope (release_cursor).
        scope = release_scope(text, repository)
        at: dt.datetime | None = None
        after: str | None = None
        if page_cursor is not None:
            key = cursor.decode(page_cursor, scope)
            try:
                at, after = dt.datetime.fromisoformat(str(key[0])), str(uuid.UUID(str(key[1])))
            except (ValueError, IndexError, TypeError):
                raise InvalidRequest("cursor is not a cursor this API returned", {"field": "cursor"}) from None
        query = SearchQuery(text, _sha_prefix(text), repository, at, after, size + 1)
        async with self.uow.read() as releases:
            hits = await releases.search(query)
        next_cursor = None
        if len(hits) > size:
            last = hits[size - 1].release
            next_cursor = cursor.encode(scope, [last.created_at.isoformat(), last.id])
        return SearchPage(tuple(hits[:size]), next_cursor)

    # --- aliases -------------------------------------------------------------------------------

    async def add_alias(self, repository: str, project: str, raw_id: str, alias: str, alias_type: str) -> AliasChange:
        domain.validate_repository(repository)
        domain.validate_project(project)
        domain.validate_alias_name(alias)
        async with self._project_lock(repository, project), self.uow.begin() as tx:
            target = await self._lock_and_resolve(tx.releases, repository, project, raw_id)
            held = (await tx.releases.aliases(repository, project, [alias])).get(alias)
            change = domain.set_alias(held, ReleaseKey(target.id, target.release_number), alias, alias_type)
            if change.action == "create":
                await tx.releases.put_alias(repository, project, alias, target.id, alias_type)
            elif change.action == "move":
                await tx.releases.move_alias(repository, project, alias, target.id)
        log.info("release.alias_set", alias=alias, alias_type=alias_type, release_id=target.id, action=change.action)
        return change

    async def remove_alias(self, repository: str, project: str, raw_id: str, alias: str) -> None:
        domain.validate_repository(repository)
        domain.validate_project(project)
        async with self._project_lock(repository, project), self.uow.begin() as tx:
            target = await self._lock_and_resolve(tx.releases, repository, project, raw_id)
            held = (await tx.releases.aliases(repository, project, [alias])).get(alias)
            domain.remove_alias(held, ReleaseKey(target.id, target.release_number), alias)
            await tx.releases.delete_alias(repository, project, alias)
        log.info("release.alias_removed", alias=alias, release_id=target.id)

    async def _lock_and_resolve(self, releases: PgReleases, repository: str, project: str, raw_id: str) -> Release:
        # Alias changes take the same per-project lock as creates, so a branch alias moved by a
        # new release and one moved by hand never interleave.
        if not await releases.lock_project(repository, project):
            raise NotFound(
                f"no release of {repository}/{project} matches {raw_id!r}",
                {"repository": repository, "project": project, "release_id": raw_id},
            )
        return await self._resolve(releases, repository, project, raw_id)


def _list_scope(repository: str, project: str) -> str:
    return cursor.fingerprint("releases", repository=repository.lower(), project=project.lower())


def _sha_prefix(q: str) -> str | None:
    lowered = q.lower()
    if 4 <= len(lowered) <= 64 and all(c in "0123456789abcdef" for c in lowered):
        return lowered + "%"
    return None
