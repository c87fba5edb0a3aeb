"""``python -m forge_worker``: pull jobs until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys

from forge_common.jobs import JobSettings
from forge_common.logging import configure_logging
from forge_common.settings import SettingsError, load
from forge_common.tracing import configure_tracing, shutdown_tracing

from .sandbox import SandboxUnavailable
from .settings import Settings
from .single import main_run_job
from .worker import Worker


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="forge-worker",
        description="The Forge worker: pulls jobs until SIGTERM (run), or runs the one job its "
        "environment names (run-job: the Argo executor's pod, docs/argo.md).",
    )
    # Every forge-<process> answers `migrate` so deployment tooling can treat them alike; the
    # worker owns no database.
    parser.add_argument("command", nargs="?", choices=["run", "run-job", "migrate"], default="run")
    command = parser.parse_args().command
    if command == "migrate":
        print("forge-worker: no database, nothing to migrate")  # noqa: T201 - a one-shot command's answer
        return
    try:
        settings = load(Settings)
        job_settings = load(JobSettings)
    except SettingsError as exc:
        print(f"forge-worker: {exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        raise SystemExit(2) from None
    configure_logging("worker", settings.log_level, settings.log_format)
    configure_tracing("worker", settings.otel_exporter)
    if command == "run-job":
        try:
            raise SystemExit(main_run_job(settings, job_settings))
        except SandboxUnavailable as exc:
            print(f"forge-worker: cannot run the job: {exc}", file=sys.stderr)  # noqa: T201 - the operator's answer
            raise SystemExit(3) from None
        finally:
            shutdown_tracing()
    # The standard event loop on purpose: its subprocess spawn (vfork) costs ~0.9 ms of CPU
    # per step where uvloop's fork of a ~100 MB worker costs ~5 ms (measured, bench/pipeline_exec.py).
    try:
        asyncio.run(Worker(settings, job_settings).run_forever())
    except SandboxUnavailable as exc:
        print(f"forge-worker: cannot start: {exc}", file=sys.stderr)  # noqa: T201 - the operator's answer
        raise SystemExit(3) from None
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
