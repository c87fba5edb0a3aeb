"""What the platform's searches share (docs/api-search.md).

``GET /v1/releases/search`` (release service) finds releases; ``GET /v1/search`` (pipeline
service) finds runs and, by asking the release service, releases, in one list. Both lists are
newest first by ``(created_at, id)`` and paged by a cursor naming the last item shown; the merged
list asks the release service for the releases after its own position with a cursor made by
:func:`release_cursor`, exactly the one a page of ``/v1/releases/search`` ending at that position
would carry. Query and page-size rules and the release hit live here so that both services
judge and describe them alike.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import msgspec

from . import cursor
from .errors import InvalidRequest

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "QUERY_CHARACTERS",
    "ReleaseHit",
    "ReleaseSearchResults",
    "page_limit",
    "query_text",
    "release_cursor",
    "release_scope",
]

QUERY_CHARACTERS = 200
DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def query_text(q: str | None) -> str:
    """``q``: required, at most :data:`QUERY_CHARACTERS`, trimmed."""
    if q is None or not q.strip():
        raise InvalidRequest("query parameter 'q' is required", {"field": "q"})
    if len(q) > QUERY_CHARACTERS:
        raise InvalidRequest(f"q must be at most {QUERY_CHARACTERS} characters", {"field": "q"})
    return q.strip()


def page_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or not (1 <= int(value) <= MAX_LIMIT):
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", {"field": "limit", "value": value[:20]})
    return int(value)


def release_scope(q: str, repository: str | None) -> str:
    """What a release search cursor is bound to: the query and the repository filter."""
    return cursor.fingerprint("search.releases", q=q, repository=(repository or "").lower())


def release_cursor(q: str, repository: str | None, created_at: dt.datetime, release_id: str) -> str:
    """The cursor of the release search page that ends with the release at this position."""
    return cursor.encode(release_scope(q, repository), [created_at.isoformat(), release_id])


class ReleaseHit(msgspec.Struct, kw_only=True, tag_field="type", tag="release"):
    """A release found by a search (``type``: ``release``)."""

    id: str
    repository: str
    project: str
    commit_sha: str
    release_number: int
    created_by: str
    branch: str | None
    tag: str | None
    aliases: list[str]
    created_at: str
    # Which of commit, branch, tag, alias, author matched.
    matched: list[str]
    url: str


class ReleaseSearchResults(msgspec.Struct, kw_only=True):
    """One page of releases matching a search, newest first (GET /v1/releases/search)."""

    example: ClassVar[dict[str, Any]] = {
        "results": [
            {
                "type": "release",
                "id": "7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
                "repository": "acme/shop",
                "project": "api",
                "commit_sha": "4f2c8e1a9b7d6c5e3f1a2b4c6d8e0f1a3b5c7d9e",
                "release_number": 42,
                "created_by": "dev@acme.io",
                "branch": None,
                "tag": "v1.4.0",
                "aliases": ["42", "v1.4.0"],
                "created_at": "2025-10-05T12:03:00Z",
                "matched": ["alias", "tag"],
                "url": "/v1/releases/7c6b5a4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
            }
        ],
        "next_cursor": None,
    }
    results: list[ReleaseHit]
    next_cursor: str | None = None
