"""Parsing ``/v1/deployments/{environment}/{repo}/{project}[/history]`` from the raw path.

``{repo}`` is either two segments (``owner/name``) or one percent-encoded segment
(``owner%2Fname``). ASGI's ``path`` is already decoded, so the two look alike there; the raw
path keeps them apart, and each raw segment is decoded on its own.

Repositories are always ``owner/name`` (the release service enforces it), so there is no
ambiguity: a first segment holding a slash is the whole repository, else the first two are.
"""

from __future__ import annotations

from dataclasses import dataclass

from forge_common.errors import InvalidRequest, NotFound
from forge_common.paths import raw_path_segments

from .domain import ENVIRONMENTS, Target

__all__ = ["PREFIX", "TargetPath", "parse_target_path", "raw_path_segments"]

PREFIX = "/v1/deployments/"
_USAGE = "resource not found; use /v1/deployments/{environment}/{owner}/{name}/{project}[/history]"


@dataclass(frozen=True)
class TargetPath:
    target: Target
    history: bool


def parse_target_path(rest: list[str]) -> TargetPath:
    """``rest``: the segments after ``/v1/deployments/`` (see :func:`raw_path_segments`)."""
    if not rest or any(not s for s in rest):
        raise NotFound(_USAGE)
    environment, tail = rest[0], rest[1:]
    if environment not in ENVIRONMENTS:
        raise InvalidRequest(
            f"unknown environment {environment!r}; use one of {', '.join(ENVIRONMENTS)}",
            {"field": "environment"},
        )
    if tail and "/" in tail[0]:
        repository, remainder = tail[0], tail[1:]
    elif len(tail) >= 2:
        repository, remainder = f"{tail[0]}/{tail[1]}", tail[2:]
    else:
        raise NotFound(_USAGE)
    if len(remainder) == 1:
        return TargetPath(Target(environment, repository, remainder[0]), history=False)
    if len(remainder) == 2 and remainder[1] == "history":
        return TargetPath(Target(environment, repository, remainder[0]), history=True)
    raise NotFound(_USAGE)
