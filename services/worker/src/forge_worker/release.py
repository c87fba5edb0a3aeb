"""Release jobs: ``POST /v1/releases`` for each project whose release trigger matched.

A release the release service cannot take yet (unreachable, 5xx, 503, 429, an expired token)
is retried with exponential back-off (tenacity) for ``FORGE_RELEASE_RETRY_FOR``, well inside
the release job's timeout, while the job's heartbeats keep it from being redelivered. What the
service refuses (4xx) fails at once. A 409 counts as done only when the release it names is
this repository, project and commit (an earlier delivery of this job made it); any other 409
(a tag alias held by another release) is a failure. Failures end in a ``failed`` reply, which
the dispatcher records on the run as ``release_error``.
"""

from __future__ import annotations

from typing import Any

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from forge_common.client import ClientCredentials, ServiceClient, ServiceResponse
from forge_common.errors import ForgeError
from forge_common.jobs import JobReply, ReleaseCreated, ReleaseJob, ReleaseProject, ReleaseResult

__all__ = ["ReleaseJobRunner"]

log = structlog.get_logger(__name__)


class _Transient(Exception):
    """An answer (or no answer) worth asking again."""


class ReleaseJobRunner:
    def __init__(
        self,
        credentials: ClientCredentials,
        releases: ServiceClient,
        retry_for: float = 600.0,
        retry_max_wait: float = 15.0,
    ) -> None:
        self.credentials = credentials
        self.releases = releases
        self.retry_for = retry_for
        self.retry_max_wait = retry_max_wait

    async def run(self, job: ReleaseJob) -> JobReply[ReleaseResult]:
        created: list[ReleaseCreated] = []
        failures: list[str] = []
        for item in job.projects:
            try:
                outcome = await self._release(job, item)
            except _Transient as exc:
                outcome = (
                    f"{item.project}: the release service still failed after {int(self.retry_for)}s of retries: {exc}"
                )
            if isinstance(outcome, ReleaseCreated):
                created.append(outcome)
            else:
                failures.append(outcome)
        if failures:
            return JobReply(status="failed", error="; ".join(failures), result=ReleaseResult(releases=created))
        return JobReply(status="success", result=ReleaseResult(releases=created))

    async def _release(self, job: ReleaseJob, item: ReleaseProject) -> ReleaseCreated | str:
        resp = await self._call("POST", "/v1/releases", self._body(job, item))
        body = resp.body if isinstance(resp.body, dict) else {}
        if resp.status == 201:
            return ReleaseCreated(
                project=item.project, release_id=body.get("id"), release_number=body.get("release_number")
            )
        if resp.status == 409:
            return await self._conflict(job, item, resp)
        return f"{item.project}: POST /v1/releases answered {resp.status}: {_message(resp)}"

    async def _conflict(self, job: ReleaseJob, item: ReleaseProject, resp: ServiceResponse) -> ReleaseCreated | str:
        details = _details(resp)
        existing_id = details.get("existing_id")
        if isinstance(existing_id, str) and existing_id:
            found = await self._call("GET", f"/v1/releases/{existing_id}", None)
            rel = found.body if found.status == 200 and isinstance(found.body, dict) else {}
            same = (
                str(rel.get("repository", "")).lower() == job.repository.lower()
                and str(rel.get("project", "")).lower() == item.project.lower()
                and str(rel.get("commit_sha", "")).lower() == job.commit_sha.lower()
            )
            if same:
                # Created by an earlier delivery of this job (or by hand for the same commit).
                return ReleaseCreated(
                    project=item.project,
                    release_id=existing_id,
                    release_number=rel.get("release_number"),
                    existing=True,
                )
        return f"{item.project}: POST /v1/releases answered 409: {_message(resp)}"

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> ServiceResponse:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=wait_exponential_jitter(multiplier=0.5, max=self.retry_max_wait),
            stop=stop_after_delay(self.retry_for),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, body, attempt.retry_state.attempt_number)
        raise AssertionError("unreachable")

    async def _once(self, method: str, path: str, body: dict[str, Any] | None, attempt: int) -> ServiceResponse:
        try:
            token = await self.credentials.token()
            resp = await self.releases.request(method, path, token=token, json=body)
        except ForgeError as exc:  # unreachable, timed out, identity provider down
            log.warning("worker.release_retry", path=path, attempt=attempt, error=exc.message)
            raise _Transient(exc.message) from exc
        if resp.status == 401:
            self.credentials.invalidate()
        if resp.status >= 500 or resp.status in (401, 408, 429):
            log.warning("worker.release_retry", path=path, attempt=attempt, status=resp.status)
            raise _Transient(f"{method} {path} answered {resp.status}: {_message(resp)}")
        return resp

    @staticmethod
    def _body(job: ReleaseJob, item: ReleaseProject) -> dict[str, Any]:
        return {
            "pipeline_run_id": job.run_id,
            "repository": job.repository,
            "project": item.project,
            "commit_sha": job.commit_sha,
            "artifacts": item.artifacts,
            "trigger": item.trigger,
        }


def _details(resp: ServiceResponse) -> dict[str, Any]:
    error = resp.body.get("error") if isinstance(resp.body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return details if isinstance(details, dict) else {}


def _message(resp: ServiceResponse) -> str:
    error = resp.body.get("error") if isinstance(resp.body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    return str(resp.body)[:500]
