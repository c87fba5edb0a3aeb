"""Checking ``pipeline_run_id`` against the pipeline service (its API, never its tables).

A release names the run that produced it, so the run must exist, be a run of the same
repository (case-insensitively) at the same commit, and have succeeded. The caller's token is
forwarded: whoever may create a release may read runs (developers, admins and workers all hold
``read``).

"Succeeded" needs no grace for a run that is still finishing: the dispatcher commits the run's
``success`` before it queues the release job (``service.complete_run`` commits, then
``forge_pipeline.dispatch.releases`` queues the job in a later transaction), so by the time a worker's release job reaches this service the run reads
``success``. Any other status (pending, running, failed, cancelled) is refused.
"""

from __future__ import annotations

from typing import Protocol

from forge_common.client import ServiceClient
from forge_common.errors import AuthorizationFailed, BadGateway, InvalidRequest

__all__ = ["PipelineRuns", "RunChecker", "SkipRunCheck"]


class RunChecker(Protocol):
    async def check(self, run_id: str, repository: str, commit_sha: str, token: str) -> None: ...

    async def close(self) -> None: ...


class SkipRunCheck:
    """FORGE_VERIFY_PIPELINE_RUNS off: accept any well-formed id."""

    async def check(self, run_id: str, repository: str, commit_sha: str, token: str) -> None:
        return None

    async def close(self) -> None:
        return None


class PipelineRuns:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.client = ServiceClient(base_url, "pipeline", timeout=timeout)

    async def check(self, run_id: str, repository: str, commit_sha: str, token: str) -> None:
        resp = await self.client.get(f"/v1/runs/{run_id}", token=token)
        if resp.status == 404:
            raise InvalidRequest(f"pipeline run {run_id} does not exist", {"field": "pipeline_run_id"})
        if resp.status in (401, 403):
            raise AuthorizationFailed("this token may not read the pipeline run", {"field": "pipeline_run_id"})
        if resp.status != 200 or not isinstance(resp.body, dict):
            raise BadGateway(
                "the pipeline service could not confirm the pipeline run",
                {"pipeline_run_id": run_id, "upstream_status": resp.status, "upstream_error": resp.error_code()},
            )
        run_repository = str(resp.body.get("repository", ""))
        run_commit = str(resp.body.get("commit_sha", "")).lower()
        if run_repository.lower() != repository.lower() or run_commit != commit_sha:
            raise InvalidRequest(
                f"pipeline run {run_id} built {run_repository}@{run_commit}, not {repository}@{commit_sha}",
                {"field": "pipeline_run_id", "run_repository": run_repository, "run_commit_sha": run_commit},
            )
        status = str(resp.body.get("status", ""))
        if status != "success":
            raise InvalidRequest(
                f"pipeline run {run_id} has not succeeded (status {status or 'unknown'}); "
                "only a successful run can produce a release",
                {"field": "pipeline_run_id", "run_status": status},
            )

    async def close(self) -> None:
        await self.client.close()
