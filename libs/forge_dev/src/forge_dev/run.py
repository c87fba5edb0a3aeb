"""``make run``: the whole platform on embedded defaults, in the foreground."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from .keys import default_data_dir
from .stack import Stack, StackConfig, Supervisor


def main() -> int:
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); give it one.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    data_dir = Path(os.environ.get("FORGE_DATA_DIR") or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir)
    if lock is None:
        return 1
    config = StackConfig(
        data_dir=data_dir,
        database_url=os.environ.get("FORGE_DATABASE_URL") or None,
        nats_url=os.environ.get("FORGE_NATS_URL") or None,
        s3_url=os.environ.get("FORGE_S3_URL") or None,
        workers=int(os.environ.get("FORGE_WORKERS", "2")),
        env={k: v for k, v in os.environ.items() if k.startswith("FORGE_") and k not in _STACK_KEYS},
    )
    stack = Stack(config)
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    # A shell starting `make run` as a background job sets SIGINT to "ignore"; restore it so
    # Ctrl-C / kill -INT stops the platform however it was started.
    signal.signal(signal.SIGINT, _stop)
    print(f"Starting Forge (state in {data_dir}) ...", flush=True)
    try:
        stack.start()
        _banner(stack)
        # A process that dies is started again (with back-off), as Kubernetes restarts a pod.
        supervisor = Supervisor(stack.infra, lambda line: print(f"forge: {line}", file=sys.stderr, flush=True))
        while True:
            supervisor.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nStopping Forge ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"make run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        print("Forge stopped.", flush=True)


def _lock(data_dir: Path) -> TextIO | None:
    """The data directory's lock, held (with this pid in it) while the platform runs; None,
    after saying who holds it, when another ``make run`` does."""
    lock = (data_dir / "run.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        print(
            f"Forge is already running from {data_dir} ({owner}); gateway at http://127.0.0.1:8080.\n"
            "Use that one, or stop it first (Ctrl-C in its terminal, or kill -TERM the pid above).",
            file=sys.stderr,
        )
        lock.close()
        return None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    return lock


_STACK_KEYS = {"FORGE_DATABASE_URL", "FORGE_NATS_URL", "FORGE_S3_URL", "FORGE_DATA_DIR", "FORGE_WORKERS"}


def _banner(stack: Stack) -> None:
    infra = stack.infra
    lines = [
        "",
        "Forge is up.",
        f"  gateway      {stack.gateway_url}   (REST API under /v1)",
        *(f"  {name:<12} {stack.service_url(name)}" for name in ("pipeline", "release", "deployment", "approval")),
        f"  workers      {len(stack.workers)}",
        f"  issuer       {infra.issuer_url}",
        f"  postgres     {infra.database_url}",
        f"  nats         {infra.nats_url}"
        + ("  (authenticated; events: `.venv/bin/forge dev nats-url`)" if infra.nats_credentials else ""),
        f"  s3           {infra.s3_url}  (bucket {stack.config.s3_bucket})",
        f"  logs         {stack.config.data_dir / 'logs'} (nats, s3, issuer); services log here",
        "",
        "Get a token and call the API:",
        "  TOKEN=$(.venv/bin/forge dev token --sub you@example.com --role developer)",
        '  curl -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:8080/v1/runs?repository=owner/repo"',
        "",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
