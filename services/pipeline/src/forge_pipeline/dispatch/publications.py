"""Publishing a successful run's artifacts for tags pushed onto its commit after they were built.

A tag pushed onto a commit whose run exists does not start a run: the webhook records it on the
run (``pipeline.tag_pushes``) and, when the run already succeeded, plans one publication per
built artifact that declares ``github-release`` (``pipeline.artifact_publications``, idempotent).
A run still running is planned here, once it succeeded, so a tag that arrived during the build
is published once the artifacts exist. A successful run with a pending publication is claimed
like any run to drive (``execution_store.claim_runs``), so the work survives a restart.

Each pending publication is one ``pipeline.publish.{run}.{publication}`` job, queued through the
outbox in the transaction that gives it its dispatch attempt. The worker pulls the artifact from
the tracking registry by digest (no rebuild) and attaches it to the tag's GitHub Release,
retrying GitHub's 5xx with back-off; JetStream redelivers a job whose worker died. The reply is
recorded under the run lock: the asset's URL joins the artifact's ``published_uris``; a failure
(GitHub refused, retries exhausted, no answer within ``FORGE_JOB_TIMEOUT_PUBLISH``) becomes the
artifact's ``error`` and counts in ``forge_pipeline_tag_publication_failures_total``. The run
stays ``success``: its build did not change, only a later delivery of it failed.
"""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import structlog
from prometheus_client import Counter

from forge_common import jobs
from forge_common.db import on_commit
from forge_common.jobs import PublishJob, PublishResult
from forge_common.outbox import add_message
from forge_pipeline import execution_store, store
from forge_pipeline.records import Publication

from .driver import RunDriver

__all__ = ["TAG_PUBLICATION_FAILURES", "publish_for_tags"]

log = structlog.get_logger(__name__)

TAG_PUBLICATION_FAILURES = Counter(
    "forge_pipeline_tag_publication_failures_total",
    "Artifacts of a successful run that could not be attached to a tag's GitHub Release",
    ["reason"],
)
for _reason in ("failed", "timeout"):
    TAG_PUBLICATION_FAILURES.labels(_reason)


async def publish_for_tags(driver: RunDriver) -> None:
    """Until the run has no pending publication: plan, queue, wait, record. A successful run
    only; a tag arriving meanwhile is planned by its webhook and picked up by the next round."""
    while True:
        queued = await _queue(driver)
        if not queued:
            return
        if driver.runtime.relay is not None:
            driver.runtime.relay.wake()
        log.info("dispatcher.publications_queued", run_id=driver.run_id, publications=len(queued))
        waiters = {p.id: driver.waiters[p.id] for p in queued}
        timeout = driver.job_settings.timeout("publish")
        done, _ = await asyncio.wait(waiters.values(), timeout=timeout)
        for publication in queued:
            waiter = waiters[publication.id]
            if waiter in done:
                await _record(driver, publication, await _outcome(driver, waiter.result()), "failed")
            else:
                waiter.cancel()
                why = f"no answer from a worker within {timeout:g}s"
                await _record(driver, publication, (None, why), "timeout")


async def _queue(driver: RunDriver) -> list[Publication]:
    """Plan the run's publications and queue a job for each pending one, in one transaction."""
    names = driver.runtime.names
    async with driver.pool.connection() as conn, conn.transaction():
        run = await execution_store.run_for_dispatch(conn, driver.run_id)
        if run is None or run.status != "success":
            return []
        await store.plan_tag_publications(conn, run.id)
        queued = await execution_store.dispatch_publications(conn, run.id)
        for publication in queued:
            # Listening before the job can be published: the relay sends it once we commit.
            driver.waiter(publication.id, publication.attempt)
            job = PublishJob(
                job_id=publication.id,
                attempt=publication.attempt,
                run_id=run.id,
                repository=run.repository,
                commit_sha=run.commit_sha,
                project=publication.project,
                name=publication.name,
                type=publication.artifact_type,
                digest=publication.digest,
                tracking_oci_uri=publication.tracking_oci_uri,
                tag=publication.tag,
            )
            # One message per dispatch attempt (the outbox's id, and JetStream's Nats-Msg-Id).
            msg_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"forge:publish:{publication.id}:{publication.attempt}"))
            headers = jobs.job_headers(names, "publish", run.id, publication.id, msg_id)
            subject = f"pipeline.publish.{run.id}.{publication.id}"
            await add_message(conn, "pipeline", msg_id, subject, msgspec.json.encode(job), headers)
    return queued


async def _outcome(driver: RunDriver, raw: bytes) -> tuple[str | None, str | None]:
    """(uri, None) for a publication made, (None, error) otherwise."""
    try:
        reply = await driver.queue.read_reply(raw, PublishResult)
    except msgspec.ValidationError as exc:
        return None, f"the worker sent an unusable reply: {exc}"
    if reply.status == "success" and reply.result is not None and reply.result.uri:
        return reply.result.uri, None
    return None, reply.error or f"the publish job ended {reply.status}"


async def _record(
    driver: RunDriver, publication: Publication, outcome: tuple[str | None, str | None], reason: str
) -> None:
    uri, error = outcome
    async with driver.pool.connection() as conn, conn.transaction():
        if await store.lock_run(conn, driver.run_id) is None:
            return
        recorded = await execution_store.finish_publication(conn, publication, uri, error)
        if recorded and error is not None:
            on_commit(conn, TAG_PUBLICATION_FAILURES.labels(reason).inc)
    log_fn = log.info if error is None else log.warning
    log_fn(
        "dispatcher.publication_done",
        run_id=driver.run_id,
        artifact=publication.name,
        project=publication.project,
        tag=publication.tag,
        uri=uri,
        error=error,
    )
