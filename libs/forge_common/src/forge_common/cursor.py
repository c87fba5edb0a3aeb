"""Opaque page cursors for keyset pagination.

A cursor names the last row of a page by its sort key (for example ``(created_at, id)``) and
the filters the page was read with; the next page is ``WHERE (key) < (cursor key)`` on an index,
as fast at page 10,000 as at page 1 and stable while rows are inserted. Clients treat it as an
opaque string: URL-safe base64 of a small JSON document. A cursor from another list or other
filters is refused (400 naming ``cursor``) rather than silently giving a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import msgspec

from .errors import InvalidRequest

__all__ = ["decode", "encode", "fingerprint"]

_VERSION = 1
_MAX_LENGTH = 1024


class _Cursor(msgspec.Struct, array_like=True):
    version: int
    scope: str
    key: list[Any]


def fingerprint(scope: str, **filters: object) -> str:
    """What a cursor is bound to: the list and its filters (order-independent)."""
    text = scope + "\x00" + "\x00".join(f"{k}={filters[k]}" for k in sorted(filters))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode(scope: str, key: list[Any]) -> str:
    raw = msgspec.json.encode(_Cursor(_VERSION, scope, key))
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(value: str, scope: str) -> list[Any]:
    """The key of a cursor made by :func:`encode` with the same ``scope``; else a 400."""
    if not value or len(value) > _MAX_LENGTH:
        raise _invalid("cursor is empty or too long")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        cursor = msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise _invalid("cursor is not a cursor this API returned") from None
    if cursor.version != _VERSION:
        raise _invalid("cursor is from another version of the API")
    if cursor.scope != scope:
        raise _invalid("cursor belongs to another list or other filters; start again without it")
    return cursor.key


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, {"field": "cursor"})
