"""The HTTP contract of the release service (request bodies; responses are built in service.py).

Enumerations are plain ``str`` here so that the domain can answer a bad value with the list of
allowed ones; unknown fields are ignored.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AliasCreate",
    "AliasOut",
    "AliasResult",
    "ArtifactIn",
    "ArtifactOut",
    "Release",
    "ReleaseCreate",
    "ReleaseCreated",
    "TriggerIn",
    "TriggerOut",
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


class ReleaseCreate(msgspec.Struct, kw_only=True):
    repository: str
    project: str
    commit_sha: str
    pipeline_run_id: str | None = None
    artifacts: list[ArtifactIn] = msgspec.field(default_factory=list)
    trigger: TriggerIn | None = None


class AliasCreate(msgspec.Struct, kw_only=True):
    alias: str
    alias_type: str


# --- responses (documentation of the contract; the service builds the same shapes) ---------


class ReleaseCreated(msgspec.Struct, kw_only=True):
    id: str
    release_number: int
    oci_uri: str
    oci_digest: str
    canonical_id: str
    created_at: str


class ArtifactOut(msgspec.Struct, kw_only=True):
    name: str
    type: str
    tracking_oci_uri: str
    primary_published_uri: str
    digest: str | None
    size: int | None


class AliasOut(msgspec.Struct, kw_only=True):
    alias: str
    alias_type: str


class TriggerOut(msgspec.Struct, kw_only=True):
    trigger_type: str
    branch: str | None
    tag: str | None
    triggered_by: str


class Release(msgspec.Struct, kw_only=True):
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


class AliasResult(msgspec.Struct, kw_only=True):
    alias: str
    alias_type: str
    release_id: str
    release_number: int
    moved_from: str | None
