"""Keeping secrets out of what viewers read: run and task errors, logs the platform writes, API
error details.

:func:`redact_url` drops credentials embedded in a URL; a :class:`Redactor` knows the process's
own secrets (client secrets, S3 keys, the credentials in ``FORGE_GIT_URL_TEMPLATE`` and
``FORGE_NATS_URL``...) and masks them, and any ``scheme://user:password@`` credentials, in text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "Redactor", "redact_url", "url_credentials"]

MASK = "***"
# scheme://userinfo@ anywhere in a text (git and HTTP clients echo URLs in their errors)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# Shorter strings would mask ordinary words.
_MIN_SECRET = 6


def redact_url(url: str) -> str:
    """A URL fit for logs and error messages: no embedded credentials."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))
    return url


def url_credentials(url: str) -> list[str]:
    """The user name and password embedded in ``url`` (as written and decoded)."""
    try:
        parts = urlsplit(url.replace("{repository}", "owner/name"))
    except ValueError:
        return []
    found = [v for v in (parts.username, parts.password) if v]
    return found + [unquote(v) for v in found if unquote(v) != v]


class Redactor:
    """Masks known secrets and URL credentials in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        # Longest first: a secret containing another is masked whole.
        self.secrets = sorted(unique, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
