"""The embedded NATS server's credentials: one generated password per identity, kept on disk.

``make run`` and the test harness start NATS with authentication (anonymous connections are
refused) and the permissions of :mod:`forge_common.nats_auth`; each Forge process connects as
its own identity. ``forge dev nats-url`` prints the read-only ``events`` identity's URL.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from forge_common.nats_auth import IDENTITIES, server_config

__all__ = ["NatsCredentials"]


class NatsCredentials:
    """``{data_dir}/nats-auth.json``: host, port and a password per identity (mode 0600)."""

    def __init__(self, path: Path, host: str, port: int, passwords: dict[str, str]) -> None:
        self.path = path
        self.host = host
        self.port = port
        self.passwords = passwords

    @classmethod
    def load_or_create(cls, data_dir: Path, host: str, port: int) -> NatsCredentials:
        path = data_dir / "nats-auth.json"
        passwords: dict[str, str] = {}
        if path.exists():
            passwords = dict(json.loads(path.read_text()).get("passwords", {}))
        for identity in IDENTITIES:
            passwords.setdefault(identity, secrets.token_urlsafe(24))
        creds = cls(path, host, port, passwords)
        creds.save()
        return creds

    @classmethod
    def load(cls, data_dir: Path) -> NatsCredentials | None:
        path = data_dir / "nats-auth.json"
        if not path.exists():
            return None
        body = json.loads(path.read_text())
        return cls(path, str(body["host"]), int(body["port"]), dict(body["passwords"]))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"host": self.host, "port": self.port, "passwords": self.passwords}, indent=2)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body)

    def url(self, identity: str | None = None) -> str:
        """The server's URL, with ``identity``'s credentials when one is named."""
        if identity is None:
            return f"nats://{self.host}:{self.port}"
        return f"nats://{identity}:{self.passwords[identity]}@{self.host}:{self.port}"

    def write_config(self, path: Path, store_dir: Path, prefix: str = "") -> Path:
        text = server_config(self.passwords, host=self.host, port=self.port, store_dir=str(store_dir), prefix=prefix)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        return path
