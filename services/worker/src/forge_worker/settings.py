"""Worker settings (``FORGE_*`` environment variables)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from forge_common.jobs import JOB_TYPES
from forge_common.settings import CommonSettings, parse_size


class Settings(CommonSettings, kw_only=True):
    """Job timeouts come from :class:`forge_common.jobs.JobSettings` (``FORGE_JOB_*``)."""

    # Where repositories are fetched from; {repository} is "owner/name". A file:// template
    # serves local repositories.
    git_url_template: str = "https://github.com/{repository}.git"
    git_cache_dir: str = "/var/cache/forge/git"
    # Deadline of every git command (a fetch from the repository's remote above all): past it the
    # command is killed and the job fails naming the operation and the remote.
    git_timeout: float = 600.0
    # Status callbacks go here (the pipeline service, or the gateway); default: pipeline_url,
    # else gateway_url.
    status_url: str = ""
    pipeline_url: str = ""
    gateway_url: str = ""
    release_url: str = ""
    # A step is reported "running" once it has run this long; quicker steps send one report
    # with both transitions when they finish (0: report at once).
    running_report_delay: float = 0.5
    # Attempts per status callback before the job counts as failed (and is retried).
    status_attempts: int = 4
    # Client-credentials service account at the issuer (FORGE_OIDC_ISSUER).
    worker_client_id: str = "forge-worker"
    worker_client_secret: str = "forge-worker-secret"  # noqa: S105 - the dev issuer's client
    # Which job types this worker pulls, and how many jobs of each it runs at once.
    worker_types: str = "discovery,ci,artifact,release,publish"
    worker_concurrency: int = 8
    # A running step's log is uploaded this often while it runs; the final upload is complete.
    log_flush_interval: float = 2.0
    log_max_bytes: int = 256 * 1024 * 1024
    # A step's log goes to S3 in parts of this size as the step prints (at least 5MiB, S3's
    # smallest multipart part); the worker holds at most about one part of it in memory.
    log_part_size: str = "8MiB"
    # How long a step's log upload keeps retrying an unreachable S3 (exponential back-off) before
    # the job is given back for another delivery; meanwhile the step waits on its full pipe.
    log_upload_retry_for: float = 300.0
    # SIGTERM grace for a cancelled or timed-out step before SIGKILL of its process group.
    step_kill_grace: float = 1.0
    # Artifact builds (issue 14). The platform registry for tracking artifacts: empty = the
    # embedded default, OCI image layouts under oci_layout_dir (the release service's root);
    # else host[:port][/namespace] (loopback registries over plain HTTP, others with oci_insecure).
    oci_registry: str = ""
    oci_insecure: bool = False
    oci_username: str = ""
    oci_password: str = ""
    oci_layout_dir: str = ""
    data_dir: str = ".forge-data"
    # github-release destinations use the common FORGE_GITHUB_API_URL and FORGE_GITHUB_TOKEN
    # (CommonSettings); the token must be allowed to write releases.
    # How long a release job keeps retrying a release service that cannot take the release yet
    # (down, 5xx, 429), with exponential back-off up to 15 s; keep it under FORGE_JOB_TIMEOUT_RELEASE.
    release_retry_for: float = 600.0
    # The step sandbox (worker README, "The step sandbox"): auto (bwrap, else unshare), bwrap,
    # unshare, or none (no isolation: every step log starts with a warning).
    step_sandbox: str = "auto"
    # Whom steps run as when the worker runs as root (never root).
    step_user: str = "nobody"
    # Where each job's copy of the checkout lives (default: <temp dir>/forge-steps-<uid>).
    step_work_dir: str = ""
    # How a job's writable checkout is made: auto (an overlay over the shared checkout when the
    # worker runs as root and the kernel mounts one, else a copy), overlay, or copy.
    step_workspace: str = "auto"
    # task: the steps of a task share one sandbox, set up once (bubblewrap; what a step leaves
    # running is killed when it ends); step: every step gets a new sandbox.
    step_sandbox_scope: str = "task"
    # Task sandboxes kept started ahead of their tasks (bubblewrap, task scope, network on), so a
    # task's first step does not wait for one; each costs an idle bwrap and bash (0: none).
    step_warm_sandboxes: int = 1
    # How often the worker removes job directories no live worker holds (also at start).
    step_sweep_interval: float = 600.0
    # Extra directories a step sees read-only (colon-separated), e.g. /opt:/nix.
    step_readonly_paths: str = ""
    # Directories steps share read-write (colon-separated), e.g. a dependency cache. Every step
    # of every repository on this worker can write there: never the git cache or data directory.
    step_writable_paths: str = ""
    # Default limits of a step; project.toml's memory, processes, timeout override them.
    step_memory: str = "4GiB"
    step_processes: int = 1024
    step_timeout: float = 3600.0
    # How often the worker checks a running step's memory and process count.
    step_watch_interval: float = 0.05
    # Port of the optional /healthz, /readyz, /metrics listener (0: none).
    worker_http_port: int = 0
    # On SIGTERM the worker stops pulling and lets running jobs finish for this long.
    shutdown_grace: float = 20.0

    @property
    def callback_url(self) -> str:
        return (self.status_url or self.pipeline_url or self.gateway_url).rstrip("/")

    @property
    def layout_root(self) -> Path:
        return Path(self.oci_layout_dir or str(Path(self.data_dir) / "oci")).resolve()

    @property
    def step_memory_bytes(self) -> int:
        return parse_size(self.step_memory)

    @property
    def log_part_bytes(self) -> int:
        return parse_size(self.log_part_size)

    @property
    def step_work_path(self) -> Path:
        return Path(self.step_work_dir or os.path.join(tempfile.gettempdir(), f"forge-steps-{os.getuid()}"))

    def job_types(self) -> list[str]:
        return [t.strip() for t in self.worker_types.split(",") if t.strip()]

    def validate(self) -> list[str]:
        problems = super().validate()
        if "{repository}" not in self.git_url_template:
            problems.append("FORGE_GIT_URL_TEMPLATE must contain {repository}")
        if not self.callback_url:
            problems.append("FORGE_STATUS_URL, FORGE_PIPELINE_URL or FORGE_GATEWAY_URL is required")
        bad = [t for t in self.job_types() if t not in JOB_TYPES]
        if bad or not self.job_types():
            problems.append("FORGE_WORKER_TYPES must list discovery, ci, artifact, release and/or publish")
        try:
            if parse_size(self.log_part_size) < 5 << 20:
                problems.append("FORGE_LOG_PART_SIZE must be at least 5MiB (S3's smallest multipart part)")
        except ValueError as exc:
            problems.append(f"FORGE_LOG_PART_SIZE: {exc}")
        if self.git_timeout <= 0:
            problems.append("FORGE_GIT_TIMEOUT must be a positive duration such as 10m")
        if self.log_upload_retry_for <= 0:
            problems.append("FORGE_LOG_UPLOAD_RETRY_FOR must be a positive duration such as 5m")
        if self.release_retry_for <= 0:
            problems.append("FORGE_RELEASE_RETRY_FOR must be a positive duration such as 10m")
        if self.step_workspace not in ("auto", "overlay", "copy"):
            problems.append('FORGE_STEP_WORKSPACE must be "auto", "overlay" or "copy"')
        if self.step_sandbox_scope not in ("task", "step"):
            problems.append('FORGE_STEP_SANDBOX_SCOPE must be "task" or "step"')
        if self.step_warm_sandboxes < 0:
            problems.append("FORGE_STEP_WARM_SANDBOXES must be >= 0")
        if self.step_sweep_interval <= 0:
            problems.append("FORGE_STEP_SWEEP_INTERVAL must be a positive duration")
        if self.step_sandbox not in ("auto", "bwrap", "unshare", "none"):
            problems.append('FORGE_STEP_SANDBOX must be "auto", "bwrap", "unshare" or "none"')
        try:
            if parse_size(self.step_memory) < 16 << 20:
                problems.append("FORGE_STEP_MEMORY must be at least 16MiB")
        except ValueError as exc:
            problems.append(f"FORGE_STEP_MEMORY: {exc}")
        if self.step_processes < 8:
            problems.append("FORGE_STEP_PROCESSES must be >= 8")
        if self.step_timeout <= 0:
            problems.append("FORGE_STEP_TIMEOUT must be a positive duration")
        if self.worker_concurrency < 1:
            problems.append("FORGE_WORKER_CONCURRENCY must be >= 1")
        return problems
