"""Release jobs: ``POST /v1/releases`` for each project whose release trigger matched."""

from __future__ import annotations

from forge_common.client import ClientCredentials, ServiceClient, ServiceResponse
from forge_common.jobs import JobReply, ReleaseCreated, ReleaseJob, ReleaseProject, ReleaseResult

from .reporter import InfraError

__all__ = ["ReleaseJobRunner"]


class ReleaseJobRunner:
    def __init__(self, credentials: ClientCredentials, releases: ServiceClient) -> None:
        self.credentials = credentials
        self.releases = releases

    async def run(self, job: ReleaseJob) -> JobReply[ReleaseResult]:
        created: list[ReleaseCreated] = []
        failures: list[str] = []
        for item in job.projects:
            resp = await self._create(job, item)
            if resp.status == 201 and isinstance(resp.body, dict):
                created.append(
                    ReleaseCreated(
                        project=item.project,
                        release_id=resp.body.get("id"),
                        release_number=resp.body.get("release_number"),
                    )
                )
            elif resp.status == 409:
                # Created by an earlier delivery of this job.
                details = resp.body.get("error", {}).get("details", {}) if isinstance(resp.body, dict) else {}
                created.append(
                    ReleaseCreated(project=item.project, release_id=details.get("existing_id"), existing=True)
                )
            elif resp.status >= 500 or resp.status == 401:
                raise InfraError(f"POST /v1/releases for {item.project} answered {resp.status}: {resp.body}")
            else:
                failures.append(f"{item.project}: HTTP {resp.status}: {resp.body}")
        if failures:
            return JobReply(status="failed", error="; ".join(failures), result=ReleaseResult(releases=created))
        return JobReply(status="success", result=ReleaseResult(releases=created))

    async def _create(self, job: ReleaseJob, item: ReleaseProject) -> ServiceResponse:
        body = {
            "pipeline_run_id": job.run_id,
            "repository": job.repository,
            "project": item.project,
            "commit_sha": job.commit_sha,
            "artifacts": item.artifacts,
            "trigger": item.trigger,
        }
        token = await self.credentials.token()
        return await self.releases.post("/v1/releases", token=token, json=body)
