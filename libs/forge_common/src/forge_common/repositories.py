"""Which repositories a platform builds: ``FORGE_REPOSITORIES``, comma-separated globs over
``owner/name`` (``*`` by default: every repository), compared case-insensitively as GitHub does.

Runs (``POST /v1/runs`` and webhooks) and releases for any other repository are refused with a
400 ``invalid_request`` whose ``details.field`` is ``repository``, before anything is stored.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from .errors import InvalidRequest

__all__ = ["RepositoryAllowList"]


class RepositoryAllowList:
    def __init__(self, patterns: str = "*") -> None:
        self.patterns = [p.strip().lower() for p in patterns.split(",") if p.strip()]

    @property
    def everything(self) -> bool:
        return "*" in self.patterns or "*/*" in self.patterns

    def allows(self, repository: str) -> bool:
        name = repository.lower()
        return self.everything or any(fnmatchcase(name, pattern) for pattern in self.patterns)

    def check(self, repository: str) -> None:
        """Raise a 400 ``invalid_request`` (``details.field = "repository"``) unless allowed."""
        if not self.allows(repository):
            raise InvalidRequest(
                f"this platform does not build {repository!r}: it is not in FORGE_REPOSITORIES",
                {"field": "repository", "value": repository},
            )

    @staticmethod
    def problems(patterns: str) -> list[str]:
        """Settings validation: what is wrong with a FORGE_REPOSITORIES value."""
        bad = [p for p in (x.strip() for x in patterns.split(",")) if p and p not in ("*",) and "/" not in p]
        if not patterns.strip():
            return ['FORGE_REPOSITORIES must list at least one owner/name glob ("*" for every repository)']
        if bad:
            return [f"FORGE_REPOSITORIES: {', '.join(bad)}: each glob is over owner/name, e.g. acme/* or acme/api"]
        return []
