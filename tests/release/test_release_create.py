"""POST /v1/releases: the created shape, numbering, duplicates, invalid inputs, roles, event."""

from __future__ import annotations

import datetime as dt
import uuid

from ._support import Api, names, release_body, sha


def _ts(value: str) -> dt.datetime:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_create_returns_the_spec_shape(developer: Api) -> None:
    repo, project = names()
    commit = sha()
    before = dt.datetime.now(dt.UTC)
    resp = await developer.create(release_body(repo, project, commit))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"id", "release_number", "oci_uri", "canonical_id", "created_at", "oci_digest"}
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["release_number"] == 1
    assert body["canonical_id"] == f"{repo}/{project}/{commit}"
    assert body["oci_uri"].endswith(f"{repo.lower()}/{project.lower()}:{commit}")
    assert body["oci_digest"].startswith("sha256:")
    assert len(body["oci_digest"]) == 71
    assert before - dt.timedelta(seconds=5) <= _ts(body["created_at"]) <= dt.datetime.now(dt.UTC)
