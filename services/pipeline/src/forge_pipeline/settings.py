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

    # Outgoing webhooks (notify/, docs/webhooks.md). Targets in loopback, link-local, private,
    # unique-local, multicast and unspecified ranges are refused unless allow_private (tests,
    # on-premises receivers). Each attempt has `timeout` seconds; a failed one is retried after
    # retry_first (doubling, with jitter, up to retry_longest) for retry_for after the event; a
    # subscription whose attempts all failed for disable_after is disabled.
    webhook_allow_private: bool = False
    webhook_timeout: float = 10.0
    webhook_retry_first: float = 5.0
    webhook_retry_longest: float = 3600.0
    webhook_retry_for: float = 24 * 3600.0
    webhook_disable_after: float = 3 * 24 * 3600.0
    # Attempts in flight per process, and how often due deliveries are looked for without a wake-up.
    webhook_concurrency: int = 16
    webhook_poll_interval: float = 1.0
    # Succeeded and failed deliveries are deleted this long after their event. At least the
    # event stream's 7 days: a consumer replaying the stream then finds every row it made.
    webhook_delivery_retention: float = 30 * 24 * 3600.0
    # False: this process serves the subscription API but neither fans events out nor sends.
    webhook_delivery_enabled: bool = True

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
        problems.extend(self._webhook_problems())
        return problems

    def _webhook_problems(self) -> list[str]:
        problems: list[str] = []
        if not (0.1 <= self.webhook_timeout <= 60):
            problems.append("FORGE_WEBHOOK_TIMEOUT must be between 100ms and 60s")
        if not (0 < self.webhook_retry_first <= self.webhook_retry_longest):
            problems.append("FORGE_WEBHOOK_RETRY_FIRST must be positive and at most FORGE_WEBHOOK_RETRY_LONGEST")
        if self.webhook_retry_for <= 0 or self.webhook_disable_after <= 0:
            problems.append("FORGE_WEBHOOK_RETRY_FOR and FORGE_WEBHOOK_DISABLE_AFTER must be positive durations")
        if not (1 <= self.webhook_concurrency <= 1000):
            problems.append("FORGE_WEBHOOK_CONCURRENCY must be between 1 and 1000")
        if self.webhook_delivery_retention < 7 * 24 * 3600:
            problems.append("FORGE_WEBHOOK_DELIVERY_RETENTION must be at least 7 days (the event stream's age)")
        if not (0.01 <= self.webhook_poll_interval <= 60):
            problems.append("FORGE_WEBHOOK_POLL_INTERVAL must be between 10ms and 60s")
        return problems
