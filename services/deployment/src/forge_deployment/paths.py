"""Parsing ``/v1/deployments/{environment}/{repo}/{project}[/history]`` from the raw path.

``{repo}`` is either two segments (``owner/name``) or one percent-encoded segment
(``owner%2Fname``). ASGI's ``path`` is already decoded, so the two look alike there; the raw
path keeps them apart, and each raw segment is decoded on its own.

Ambiguity rule: with three segments after the environment and ``history`` last, the request is
the history of a one-segment repository; the current deployment of a project literally named
``history`` in a two-segment repository is reached with the encoded form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from forge_common.errors import InvalidRequest, NotFound

from .domain import ENVIRONMENTS, Target

__all__ = ["TargetPath", "parse_target_path", "raw_path_segments"]

PREFIX = ("v1", "deployments")


@dataclass(frozen=True)
class TargetPath:
    target: Target
    history: bool


def raw_path_segments(scope: Mapping[str, Any]) -> list[str]:
    """The request path's segments, each percent-decoded separately (``%2F`` stays inside one)."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        text = bytes(raw).decode("latin-1").split("?", 1)[0]
        return [unquote(s, encoding="utf-8", errors="strict") for s in text.split("/")[1:]]
    return str(scope.get("path", "")).split("/")[1:]


def parse_target_path(segments: list[str]) -> TargetPath:
    if tuple(segments[: len(PREFIX)]) != PREFIX:
        raise NotFound("resource not found")
    rest = segments[len(PREFIX) :]
    if rest and rest[-1] == "":
        rest = rest[:-1]  # tolerate one trailing slash
    if len(rest) < 3 or len(rest) > 5 or any(not s for s in rest):
        raise NotFound(
            "resource not found; use /v1/deployments/{environment}/{repo}/{project}[/history]",
        )
    environment, tail = rest[0], rest[1:]
    if environment not in ENVIRONMENTS:
        raise InvalidRequest(
            f"unknown environment {environment!r}; use one of {', '.join(ENVIRONMENTS)}",
            {"field": "environment"},
        )
    history = False
    if len(tail) in (3, 4) and tail[-1] == "history":
        history, tail = True, tail[:-1]
    if len(tail) == 2:
        repository, project = tail
    elif len(tail) == 3:
        repository, project = f"{tail[0]}/{tail[1]}", tail[2]
    else:
        raise NotFound("resource not found; use /v1/deployments/{environment}/{repo}/{project}[/history]")
    return TargetPath(Target(environment, repository, project), history)
