"""Contexts (a gateway and the tokens for it) in the user's config directory.

``$XDG_CONFIG_HOME/forge/config.json`` (``~/.config/forge`` by default; platformdirs picks the
platform's place elsewhere), written atomically with mode 0600: it holds refresh tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

__all__ = ["Config", "Context", "config_path", "context_name_for"]


def config_path() -> Path:
    return platformdirs.user_config_path("forge") / "config.json"


def context_name_for(api: str) -> str:
    """A context's default name: the gateway's host and port."""
    return urlsplit(api).netloc or api


@dataclass
class Context:
    api: str
    issuer: str | None = None
    client_id: str | None = None
    token_endpoint: str | None = None
    revocation_endpoint: str | None = None
    access_token: str | None = None
    expires_at: float | None = None  # None: unknown (a token given with --with-token without `exp`)
    refresh_token: str | None = None
    refresh_expires_at: float | None = None
    user: str | None = None
    roles: list[str] = field(default_factory=list)

    def access_valid(self, margin: float = 30.0) -> bool:
        return bool(self.access_token) and (self.expires_at is None or self.expires_at - margin > time.time())

    def refreshable(self) -> bool:
        return bool(self.refresh_token and self.token_endpoint) and (
            self.refresh_expires_at is None or self.refresh_expires_at > time.time()
        )

    def forget_tokens(self) -> None:
        self.access_token = self.refresh_token = None
        self.expires_at = self.refresh_expires_at = None
        self.user, self.roles = None, []


class Config:
    def __init__(self, path: Path, current: str | None, contexts: dict[str, Context]) -> None:
        self.path = path
        self.current = current
        self.contexts = contexts

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path, None, {})
        except (OSError, ValueError) as exc:
            from .http import CliError

            raise CliError(f"cannot read {path}: {exc}") from None
        known = {f.name for f in fields(Context)}
        contexts = {
            name: Context(**{k: v for k, v in ctx.items() if k in known})
            for name, ctx in data.get("contexts", {}).items()
        }
        return cls(path, data.get("current_context"), contexts)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"current_context": self.current, "contexts": {n: asdict(c) for n, c in self.contexts.items()}}
        # mkstemp creates the file 0600 before any token is written to it
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialises token refreshes of concurrent ``forge`` processes: the issuer rotates
        refresh tokens and ends the session when a spent one comes back, so two processes must
        never both refresh with the same token."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            try:
                import fcntl
            except ImportError:  # Windows: no advisory locks; concurrent refreshes may race
                yield
                return
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def for_api(self, api: str, name: str | None = None) -> tuple[str, Context] | None:
        """The named context, else the current one if it is for this gateway."""
        if name is not None:
            ctx = self.contexts.get(name)
            return (name, ctx) if ctx is not None else None
        if self.current and self.current in self.contexts:
            ctx = self.contexts[self.current]
            if ctx.api.rstrip("/") == api.rstrip("/"):
                return self.current, ctx
        return None
