"""Path segments from the undecoded ``raw_path``.

Servers decode ``%2F`` in the ASGI ``path``, so ``/x/owner%2Fname/p`` and ``/x/owner/name/p``
look alike there. Routes that accept a slash-holding identifier (a repository ``owner/name``)
either as two segments or percent-encoded as one use a catch-all route and split the raw path
with :func:`raw_path_segments`, which decodes every segment on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .errors import InvalidRequest, NotFound

__all__ = ["raw_path_segments"]


def raw_path_segments(scope: Mapping[str, Any], prefix: str) -> list[str]:
    """The segments after ``prefix`` (e.g. ``"/v1/deployments/"``), each percent-decoded.

    One trailing slash is tolerated; a path outside ``prefix`` is :class:`NotFound`, one that is
    not valid percent-encoded UTF-8 is :class:`InvalidRequest`.
    """
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes | bytearray) or not raw:
        raw = str(scope.get("path", "")).encode()
    raw = bytes(raw).split(b"?", 1)[0]
    head = prefix.encode()
    if not raw.startswith(head):
        raise NotFound("resource not found")
    try:
        parts = [unquote(p.decode("ascii"), errors="strict") for p in raw[len(head) :].split(b"/")]
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("path is not valid percent-encoded UTF-8") from None
    if parts and parts[-1] == "":
        parts.pop()
    return parts
