"""The HTTP contract of the release service (request bodies; responses are built in service.py).

Enumerations are plain ``str`` here so that the domain can answer a bad value with the list of
allowed ones; unknown fields are ignored.
"""

from __future__ import annotations

import msgspec

__all__ = ["AliasCreate", "ArtifactIn", "ReleaseCreate", "TriggerIn"]


class ArtifactIn(msgspec.Struct, kw_only=True):
    name: str
    type: str
    tracking_oci_uri: str
    primary_published_uri: str


class TriggerIn(msgspec.Struct, kw_only=True):
    """Contract #2: what started the release; absent means ``manual``."""

    trigger_type: str
    branch: str | None = None
    tag: str | None = None


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
