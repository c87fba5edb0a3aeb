"""Worker settings (``FORGE_*`` environment variables)."""

from __future__ import annotations

from forge_common.settings import CommonSettings


class Settings(CommonSettings, kw_only=True):
    """Job timeouts come from :class:`forge_common.jobs.JobSettings` (``FORGE_JOB_*``)."""

    # Where repositories are fetched from; {repository} is "owner/name". A file:// template
    # serves local repositories.
    git_url_template: str = "https://github.com/{repository}.git"
    git_cache_dir: str = "/var/cache/forge/git"
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
    worker_types: str = "discovery,ci,release"
    worker_concurrency: int = 8
    # A running step's log is uploaded this often while it runs; the final upload is complete.
    log_flush_interval: float = 2.0
    log_max_bytes: int = 256 * 1024 * 1024
    # How long a step's log upload keeps retrying an unreachable S3 (exponential back-off) before
    # the job is given back for another delivery; output waits in memory, at most one 8 MiB part.
    log_upload_retry_for: float = 300.0
    # SIGTERM grace for a cancelled or timed-out step before SIGKILL of its process group.
    step_kill_grace: float = 1.0
    # How long a release job keeps retrying a release service that cannot take the release yet
    # (down, 5xx, 429), with exponential back-off up to 15 s; keep it under FORGE_JOB_TIMEOUT_RELEASE.
    release_retry_for: float = 600.0
    # Port of the optional /healthz, /readyz, /metrics listener (0: none).
    worker_http_port: int = 0
    # On SIGTERM the worker stops pulling and lets running jobs finish for this long.
    shutdown_grace: float = 20.0

    @property
    def callback_url(self) -> str:
        return (self.status_url or self.pipeline_url or self.gateway_url).rstrip("/")

    def job_types(self) -> list[str]:
        return [t.strip() for t in self.worker_types.split(",") if t.strip()]

    def validate(self) -> list[str]:
        problems = super().validate()
        if "{repository}" not in self.git_url_template:
            problems.append("FORGE_GIT_URL_TEMPLATE must contain {repository}")
        if not self.callback_url:
            problems.append("FORGE_STATUS_URL, FORGE_PIPELINE_URL or FORGE_GATEWAY_URL is required")
        bad = [t for t in self.job_types() if t not in ("discovery", "ci", "artifact", "release")]
        if bad or not self.job_types():
            problems.append("FORGE_WORKER_TYPES must list discovery, ci, artifact and/or release")
        if self.log_upload_retry_for <= 0:
            problems.append("FORGE_LOG_UPLOAD_RETRY_FOR must be a positive duration such as 5m")
        if self.release_retry_for <= 0:
            problems.append("FORGE_RELEASE_RETRY_FOR must be a positive duration such as 10m")
        if self.worker_concurrency < 1:
            problems.append("FORGE_WORKER_CONCURRENCY must be >= 1")
        return problems
