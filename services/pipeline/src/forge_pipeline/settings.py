from forge_common.repositories import RepositoryAllowList
from forge_common.settings import CommonSettings


class Settings(CommonSettings, kw_only=True):
    """Settings of the pipeline service (FORGE_* environment variables)."""

    # Run orchestration in this process (read by create_app). False gives an API-only
    # instance: runs stay where the API and the internal status endpoints put them.
    dispatcher_enabled: bool = True
    # At most this many pending+running runs per repository (spec: 100).
    max_active_runs_per_repository: int = 100
    # Which repositories this platform builds: comma-separated globs over owner/name (runs and
    # webhooks for others are refused with 400 invalid_request, details.field = "repository").
    repositories: str = "*"
    # Lifetime of the presigned logs_url of a step, in seconds (Go durations accepted).
    logs_url_ttl: float = 3600.0
    # GitHub: webhook HMAC secret and the context of run commit statuses (the API URL, token and
    # sender settings are the common FORGE_GITHUB_* ones; statuses link to FORGE_PUBLIC_URL).
    github_webhook_secret: str = ""
    github_status_context: str = "forge/pipeline"

    # Finished runs older than this are deleted (retention.py), checked every interval, in
    # batches of at most run_retention_batch runs.
    run_retention: float = 90 * 24 * 3600.0
    run_retention_interval: float = 3600.0
    run_retention_batch: int = 500

    # GET /v1/steps/{id}/logs?follow=true looks for more log this often while the step runs
    # (the worker uploads the growing log every FORGE_LOG_FLUSH_INTERVAL, 2 s by default).
    log_follow_interval: float = 1.0
    # Longest quiet time of a Server-Sent Events stream before a comment heartbeat (spec: 15 s).
    stream_heartbeat: float = 15.0

    # Search (search.py): at most this many bytes of a step's log are indexed, from its start
    # (0 turns log indexing off). Lines past the cap are not found by GET /v1/search/logs.
    search_log_index_bytes: int = 1024 * 1024
    # The release service, whose search GET /v1/search merges with the runs it finds, and the
    # upper bound of one call to it (a Go duration).
    release_url: str = "http://127.0.0.1:8082"
    release_timeout: float = 5.0

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.run_retention <= 0 or self.run_retention_interval <= 0:
            problems.append("FORGE_RUN_RETENTION and FORGE_RUN_RETENTION_INTERVAL must be positive durations")
        if not (1 <= self.run_retention_batch <= 10000):
            problems.append("FORGE_RUN_RETENTION_BATCH must be between 1 and 10000")
        problems.extend(RepositoryAllowList.problems(self.repositories))
        if not (0.05 <= self.log_follow_interval <= 60):
            problems.append("FORGE_LOG_FOLLOW_INTERVAL must be between 50ms and 60s")
        if not (0.1 <= self.stream_heartbeat <= 15):
            problems.append("FORGE_STREAM_HEARTBEAT must be between 100ms and 15s")
        if self.max_active_runs_per_repository < 1:
            problems.append("FORGE_MAX_ACTIVE_RUNS_PER_REPOSITORY must be >= 1")
        if not (1 <= self.logs_url_ttl <= 7 * 24 * 3600):
            problems.append("FORGE_LOGS_URL_TTL must be between 1s and 7 days")
        if not self.release_url.startswith(("http://", "https://")):
            problems.append("FORGE_RELEASE_URL must be an http:// or https:// URL")
        if not (0 < self.release_timeout <= 60):
            problems.append("FORGE_RELEASE_TIMEOUT must be a duration between 0 and 60s")
        if not (0 <= self.search_log_index_bytes <= 64 * 1024 * 1024):
            problems.append("FORGE_SEARCH_LOG_INDEX_BYTES must be between 0 and 67108864 (64 MiB)")
        return problems
