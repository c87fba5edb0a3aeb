"""Crash between publishing the OCI artifact and committing: the retry converges.

The service runs in-process against the platform's real database (schema ``release`` is already
migrated by the running release service) with a real embedded-layout publisher in a temporary
directory. A publisher that dies right after a successful publish stands in for the process
dying at that point; the transaction then never commits.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forge_common.db import Pool, create_pool
from forge_dev.testing import Platform
from forge_release.domain import NewRelease
from forge_release.oci import LayoutPublisher, OciArtifact
from forge_release.service import ReleaseService
from forge_release.store import UnitOfWork


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"crash-{tag}/repo-{tag}", f"svc-{tag}"


def sha() -> str:
    return secrets.token_hex(20)


class ProcessDied(Exception):
    pass


class DiesAfterPublishing(LayoutPublisher):
    async def publish(self, artifact: OciArtifact) -> str:
        await super().publish(artifact)
        raise ProcessDied


@pytest.fixture
async def pool(platform: Platform) -> AsyncIterator[Pool]:
    p = await create_pool(platform.database_url, 1, 2, "release-test")
    yield p
    await p.close()


def _release(repo: str, project: str, commit: str) -> NewRelease:
    return NewRelease.parse(
        repository=repo,
        project=project,
        commit_sha=commit,
        pipeline_run_id=None,
        artifacts=[],
        trigger=None,
        created_by="crash@example.com",
        now=dt.datetime.now(dt.UTC),
    )


async def test_publish_then_crash_leaves_no_release_and_the_retry_converges(pool: Pool, tmp_path: Path) -> None:
    repo, project = names()
    commit = sha()
    dying = ReleaseService(UnitOfWork(pool), DiesAfterPublishing(tmp_path))
    with pytest.raises(ProcessDied):
        await dying.create_release(_release(repo, project, commit))

    layout = tmp_path / repo.lower() / project.lower()
    orphan = json.loads((layout / "index.json").read_bytes())["manifests"]
    assert len(orphan) == 1  # the registry side got the artifact ...
    healthy = ReleaseService(UnitOfWork(pool), LayoutPublisher(tmp_path))
    listing = await healthy.list_releases(repo, project, 20, 0)
    assert listing.total == 0  # ... the database did not: no release, no number used

    created = await healthy.create_release(_release(repo, project, commit))
    assert created.number == 1
    index = json.loads((layout / "index.json").read_bytes())["manifests"]
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index] == [commit]
    assert index[0]["digest"] == created.oci_digest != orphan[0]["digest"]
    got = await healthy.get_by_id(created.id)
    assert got.oci_digest == created.oci_digest
    manifest = json.loads((layout / "blobs" / "sha256" / created.oci_digest.removeprefix("sha256:")).read_bytes())
    assert manifest["annotations"]["dev.forge.release.id"] == created.id
    assert str(uuid.UUID(created.id)) == created.id
