"""The HTTP contract of the release service: request bodies, and the responses, built from the
domain's records (``X.of(record)``).

Enumerations are plain ``str`` here so that the domain can answer a bad value with the list of
allowed ones; unknown fields are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from forge_common.events import isoformat
from forge_common.search import ReleaseHit, ReleaseSearchResults

if TYPE_CHECKING:
    from .domain import AliasChange, Artifact, CreatedRelease, ReleasePage, SearchPage
    from .domain import Release as ReleaseRecord
    from .domain import ReleaseSummary as ReleaseSummaryRecord

__all__ = [
    "AliasCreate",
    "AliasOut",
    "AliasResult",
    "ArtifactIn",
    "ArtifactOut",
    "Release",
    "ReleaseCreate",
    "ReleaseCreated",
    "ReleaseList",
    "ReleaseSummary",
    "TriggerIn",
    "TriggerOut",
    "release_page",
]


class ArtifactIn(msgspec.Struct, kw_only=True):
    name: str
    type: str
    tracking_oci_uri: str
    primary_published_uri: str
    # Beyond the spec (issue 14): the tracking artifact's manifest digest and the content's size,
    # as the worker that built it reports them.
    digest: str | None = None
    size: int | None = None


class TriggerIn(msgspec.Struct, kw_only=True):
    """Contract #2: what started the release; absent means ``manual``."""

    trigger_type: str
    branch: str | None = None
    tag: str | None = None
    # Who caused the release (the run's author); honoured from service accounts only, since a
    # worker creates releases on behalf of whoever pushed. Users are always their own trigger.
    triggered_by: str | None = None
    # The stable identity of triggered_by (service accounts only, with triggered_by):
    # "sub:<token subject>" for a run created through the API, "github:<numeric user id>" for a
    # webhook run. The approval service compares it, not the name, to refuse self-approval.
    triggered_by_id: str | None = None


class ReleaseCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {
        "pipeline_run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "repository": "mycompany/myrepo",
        "project": "api",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "artifacts": [
            {
                "name": "api",
                "type": "container",
                "tracking_oci_uri": "oci://registry.example.com/forge/mycompany/myrepo/api:4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "primary_published_uri": "ghcr.io/mycompany/api:v1.2.3",
            }
        ],
    }

    repository: str
    project: str
    commit_sha: str
    pipeline_run_id: str | None = None
    artifacts: list[ArtifactIn] = msgspec.field(default_factory=list)
    trigger: TriggerIn | None = None


class AliasCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example: ClassVar[dict[str, Any]] = {"alias": "v1.2.3", "alias_type": "tag"}

    alias: str
    alias_type: str


# --- responses ------------------------------------------------------------------------------


class ReleaseCreated(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "release_number": 42,
        "oci_uri": "oci://registry.example.com/forge/releases/mycompany/myrepo/api:42",
        "oci_digest": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "canonical_id": "mycompany/myrepo/api/4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "created_at": "2025-10-05T12:03:00Z",
    }

    id: str
    release_number: int
    oci_uri: str
    oci_digest: str
    canonical_id: str
    created_at: str

    @classmethod
    def of(cls, created: CreatedRelease) -> ReleaseCreated:
        return cls(
            id=created.id,
            release_number=created.number,
            oci_uri=created.oci_uri,
            oci_digest=created.oci_digest,
            canonical_id=created.release.canonical_id,
            created_at=isoformat(created.release.created_at),
        )


class ArtifactOut(msgspec.Struct, kw_only=True):
    name: str
    type: str
    tracking_oci_uri: str
    primary_published_uri: str
    digest: str | None
    size: int | None

    @classmethod
    def of(cls, a: Artifact) -> ArtifactOut:
        return cls(
            name=a.name,
            type=a.type,
            tracking_oci_uri=a.tracking_oci_uri,
            primary_published_uri=a.primary_published_uri,
            digest=a.digest,
            size=a.size,
        )


class AliasOut(msgspec.Struct, kw_only=True):
    alias: str
    alias_type: str


class TriggerOut(msgspec.Struct, kw_only=True):
    trigger_type: str
    branch: str | None
    tag: str | None
    triggered_by: str


class Release(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "repository": "mycompany/myrepo",
        "project": "api",
        "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
        "release_number": 42,
        "oci_uri": "oci://registry.example.com/forge/releases/mycompany/myrepo/api:42",
        "oci_digest": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "created_at": "2025-10-05T12:03:00Z",
        "created_by": "alice@company.com",
        "created_by_id": "sub:1f0e2d3c",
        "triggered_by_id": "sub:1f0e2d3c",
        "pipeline_run_id": "0b9c7f5e-3d2a-4c1b-9e8f-6a5b4c3d2e1f",
        "artifacts": [
            {
                "name": "api",
                "type": "container",
                "tracking_oci_uri": "oci://registry.example.com/forge/mycompany/myrepo/api:4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "primary_published_uri": "ghcr.io/mycompany/api:v1.2.3",
                "digest": "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                "size": 52428800,
            }
        ],
        "aliases": [{"alias": "v1.2.3", "alias_type": "tag"}, {"alias": "42", "alias_type": "numeric"}],
        "trigger": {"trigger_type": "branch_push", "branch": "main", "tag": None, "triggered_by": "alice@company.com"},
    }

    id: str
    repository: str
    project: str
    commit_sha: str
    release_number: int
    oci_uri: str
    oci_digest: str
    created_at: str
    created_by: str
    created_by_id: str | None
    triggered_by_id: str | None
    pipeline_run_id: str | None
    artifacts: list[ArtifactOut]
    aliases: list[AliasOut]
    trigger: TriggerOut

    @classmethod
    def of(cls, r: ReleaseRecord) -> Release:
        """The Get Release shape of the spec (plus ``pipeline_run_id``, ``trigger.tag`` and the
        stable identities ``created_by_id`` and ``triggered_by_id``, of ``created_by`` and
        ``trigger.triggered_by``)."""
        t = r.trigger
        return cls(
            id=r.id,
            repository=r.repository,
            project=r.project,
            commit_sha=r.commit_sha,
            release_number=r.release_number,
            oci_uri=r.oci_uri,
            oci_digest=r.oci_digest,
            created_at=isoformat(r.created_at),
            created_by=r.created_by,
            created_by_id=r.created_by_id,
            triggered_by_id=t.triggered_by_id,
            pipeline_run_id=r.pipeline_run_id,
            artifacts=[ArtifactOut.of(a) for a in r.artifacts],
            aliases=[AliasOut(alias=a.alias, alias_type=a.alias_type) for a in r.aliases],
            trigger=TriggerOut(trigger_type=t.trigger_type, branch=t.branch, tag=t.tag, triggered_by=t.triggered_by),
        )


class AliasResult(msgspec.Struct, kw_only=True):
    example: ClassVar[dict[str, Any]] = {
        "alias": "v1.2.3",
        "alias_type": "tag",
        "release_id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "release_number": 42,
        "moved_from": None,
    }

    alias: str
    alias_type: str
    release_id: str
    release_number: int
    moved_from: str | None

    @classmethod
    def of(cls, change: AliasChange) -> AliasResult:
        return cls(
            alias=change.alias,
            alias_type=change.alias_type,
            release_id=change.release_id,
            release_number=change.release_number,
            moved_from=change.moved_from,
        )


class ReleaseSummary(msgspec.Struct, kw_only=True):
    id: str
    commit_sha: str
    release_number: int
    created_at: str

    @classmethod
    def of(cls, r: ReleaseSummaryRecord) -> ReleaseSummary:
        return cls(
            id=r.id, commit_sha=r.commit_sha, release_number=r.release_number, created_at=isoformat(r.created_at)
        )


class ReleaseList(msgspec.Struct, kw_only=True):
    """A page of a project's releases, newest first."""

    example: ClassVar[dict[str, Any]] = {
        "releases": [
            {
                "id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
                "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "release_number": 42,
                "created_at": "2025-10-05T12:03:00Z",
            }
        ],
        "total": 150,
        "limit": 20,
        "offset": 0,
        "next_cursor": "eyJrIjpbNDFdfQ",
    }

    releases: list[ReleaseSummary]
    total: int
    limit: int
    offset: int
    # Pass as ``?cursor=`` for the next page; null on the last one.
    next_cursor: str | None

    @classmethod
    def of(cls, page: ReleasePage) -> ReleaseList:
        return cls(
            releases=[ReleaseSummary.of(r) for r in page.releases],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
            next_cursor=page.next_cursor,
        )


def release_page(page: SearchPage) -> ReleaseSearchResults:
    """``GET /v1/releases/search``'s answer: the hits as forge_common.search describes them
    (the pipeline service's ``GET /v1/search`` merges the same records with its runs)."""
    return ReleaseSearchResults(
        results=[
            ReleaseHit(
                id=hit.release.id,
                repository=hit.repository,
                project=hit.project,
                commit_sha=hit.release.commit_sha,
                release_number=hit.release.release_number,
                created_by=hit.created_by,
                branch=hit.branch,
                tag=hit.tag,
                aliases=list(hit.aliases),
                created_at=isoformat(hit.release.created_at),
                matched=list(hit.matched),
                url=f"/v1/releases/{hit.release.id}",
            )
            for hit in page.hits
        ],
        next_cursor=page.next_cursor,
    )
