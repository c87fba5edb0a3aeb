"""API versions and deprecations.

Routing is keyed by the version segment (``/v1/...``, ``/v2/...``): :data:`API_VERSIONS` maps a
version to its own segment -> service table, so a ``/v2`` can be added beside ``/v1`` without
touching a single ``/v1`` route. Deprecations are data, not code: the TOML file named by
``FORGE_DEPRECATIONS`` lists the operations being retired, and every response to one of them
carries ``Deprecation`` (RFC 9745), ``Sunset`` (RFC 8594) and ``Link`` headers.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass
from email.utils import format_datetime

__all__ = ["API_VERSIONS", "NOTICE", "Deprecation", "Deprecations", "load_deprecations"]

# version -> first path segment -> service. /v2 goes here as {"v2": {...}} when it exists.
API_VERSIONS: dict[str, dict[str, str]] = {
    "v1": {
        "runs": "pipeline",
        "tasks": "pipeline",
        "steps": "pipeline",
        "webhooks": "pipeline",
        "webhook-subscriptions": "pipeline",  # outgoing webhooks (docs/webhooks.md)
        "events": "pipeline",  # GET /v1/events: the platform's event stream, served by the pipeline service
        "search": "pipeline",  # GET /v1/search, /v1/search/logs: runs and step logs (docs/api-search.md)
        "releases": "release",
        "deployments": "deployment",
        "approvals": "approval",
    },
}
# The policy: an operation is announced deprecated at least this long before its sunset.
NOTICE = dt.timedelta(days=182)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PARAM = re.compile(r"\{[^/{}]+\}")


@dataclass(frozen=True)
class Deprecation:
    method: str
    path: re.Pattern[str]
    headers: list[tuple[bytes, bytes]]


def _instant(value: object, key: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise ValueError(f"{key} must be a TOML date or date-time, got {value!r}")


def _entry(raw: dict[str, object], index: int) -> Deprecation:
    where = f"operations[{index}]"
    method = str(raw.get("method", "")).upper()
    template = raw.get("path")
    link = raw.get("link")
    if method not in _METHODS:
        raise ValueError(f"{where}.method must be one of {sorted(_METHODS)}")
    if not isinstance(template, str) or not re.match(r"^/v[0-9]+/", template):
        raise ValueError(f"{where}.path must be an API path such as /v1/runs/{{run_id}}")
    if not isinstance(link, str) or not link.startswith(("http://", "https://")):
        raise ValueError(f"{where}.link must be an http(s) URL of the deprecation notice")
    deprecated = _instant(raw.get("deprecated"), f"{where}.deprecated")
    sunset = _instant(raw.get("sunset"), f"{where}.sunset")
    if sunset - deprecated < NOTICE:
        raise ValueError(f"{where}: the sunset must be at least 6 months after the deprecation (policy)")
    pattern = "".join(
        "[^/]+" if _PARAM.fullmatch(part) else re.escape(part) for part in re.split(r"(\{[^/{}]+\})", template)
    )
    sunset_link = raw.get("sunset_link", link)
    headers = [
        (b"deprecation", b"@%d" % int(deprecated.timestamp())),
        (b"sunset", format_datetime(sunset.astimezone(dt.UTC), usegmt=True).encode("latin-1")),
        (b"link", f'<{link}>; rel="deprecation"; type="text/html"'.encode("latin-1")),
        (b"link", f'<{sunset_link}>; rel="sunset"; type="text/html"'.encode("latin-1")),
    ]
    return Deprecation(method, re.compile(f"^{pattern}$"), headers)


class Deprecations:
    def __init__(self, entries: list[Deprecation]) -> None:
        self.entries = entries

    def headers(self, method: str, path: str) -> list[tuple[bytes, bytes]]:
        """The headers to add to a response of ``method path`` (none for most operations)."""
        for entry in self.entries:
            if entry.method == method and entry.path.match(path):
                return entry.headers
        return []


def load_deprecations(path: str) -> Deprecations:
    """The table from the TOML file at ``path`` (empty path: nothing deprecated)."""
    if not path:
        return Deprecations([])
    with open(path, "rb") as f:
        document = tomllib.load(f)
    operations = document.get("operations", [])
    if not isinstance(operations, list):
        raise ValueError("operations must be an array of tables ([[operations]])")
    return Deprecations([_entry(raw, i) for i, raw in enumerate(operations)])
