"""Artifact jobs: build one declared artifact on a fresh checkout, push its tracking artifact to
the platform registry, publish it to its primary destinations, reply with what was built.

The build runs through :meth:`StepRunner.run`, the function every CI step runs through (log
streamed to ``pipeline-runs/{run}/logs/artifacts/{project}/{artifact}.log``, process group,
timeout, cancellation), so whatever isolation applies to steps applies to builds. The worker
reports the step ``running``; its outcome travels in the reply, and the dispatcher records it
together with the artifact's digest.

The tracking artifact goes to ``{registry}/{owner}/{name}/{project}/{artifact}:{commit}``
(lower-cased, as OCI names must be), in ``FORGE_OCI_REGISTRY`` or, by default, the on-disk OCI
layout root the release service uses (``FORGE_OCI_LAYOUT_DIR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from forge_common.jobs import ArtifactJob, ArtifactResult, JobReply
from forge_common.oci import OciError, OciStore

from .git import GitCache, GitError
from .packaging import Packaged, PackageError, package
from .publish import Destinations, PublishError
from .reporter import InfraError, Reporter
from .sandbox import Limits, Workspace
from .steps import StepRunner, log_key

__all__ = ["ArtifactJobRunner", "tracking_repository"]

log = structlog.get_logger(__name__)

ArtifactReply = JobReply[ArtifactResult]


def tracking_repository(job: ArtifactJob) -> str:
    return f"{job.repository}/{job.project}/{job.name}".lower()


class ArtifactJobRunner:
    def __init__(
        self,
        git: GitCache,
        runner: StepRunner,
        reporter: Reporter,
        defaults: Limits,
        store: OciStore,
        destinations: Destinations,
        default_timeout: float,
        running_report_delay: float,
        is_cancelled: Callable[[str], bool],
        scratch_root: Path,
    ) -> None:
        self.git = git
        self.runner = runner
        self.reporter = reporter
        self.defaults = defaults
        self.store = store
        self.destinations = destinations
        self.default_timeout = default_timeout
        self.running_report_delay = running_report_delay
        self.is_cancelled = is_cancelled
        self.scratch_root = scratch_root

    async def run(self, job: ArtifactJob) -> ArtifactReply:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="artifact-", dir=self.scratch_root))
        try:
            return await self._run(job, scratch)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    def _failed(self, job: ArtifactJob, cause: str, logs: str | None = None) -> ArtifactReply:
        result = ArtifactResult(name=job.name, type=job.type, logs_s3_key=logs)
        return ArtifactReply(
            status="failed", error=f"artifact {job.name} of project {job.project}: {cause}", result=result
        )

    async def _run(self, job: ArtifactJob, scratch: Path) -> ArtifactReply:
        try:
            full, checkout = await self.git.fresh_checkout(job.repository, job.commit_sha, scratch / "src")
        except GitError as exc:
            return self._failed(job, str(exc))
        workdir = (checkout / job.project_path).resolve()
        if not workdir.is_relative_to(checkout.resolve()) or not workdir.is_dir():
            return self._failed(job, f"project directory {job.project_path!r} does not exist at {full}")
        key = log_key(job.run_id, "artifacts", job.project, job.name)
        timeout = float(job.timeout_seconds) if job.timeout_seconds else self.default_timeout
        cwd = str(workdir.relative_to(checkout.resolve()))
        # The build runs exactly as a CI step does: the same sandbox, a private workspace copy.
        try:
            workspace = await Workspace.for_sandbox(self.runner.sandbox, checkout)
        except OSError as exc:
            raise InfraError(f"cannot prepare the build's workspace: {exc}") from exc
        try:
            cancel = asyncio.Event()
            running = asyncio.create_task(self.reporter.running_after(job.job_id, self.running_report_delay, cancel))
            limits = Limits(
                memory=self.defaults.memory, processes=self.defaults.processes, timeout=timeout, network=True
            )
            outcome = await self.runner.run(
                run_id=job.run_id,
                # The same argv and runner as a CI shell step: whatever wraps steps wraps builds.
                argv=self.runner.argv("shell", job.build) or ["bash", "-e", "-c", job.build],
                workspace=workspace,
                cwd=cwd,
                env=self._env(job),
                limits=limits,
                key=key,
                cancel=cancel,
            )
            if not running.done():
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            logs = key if outcome.has_log else None
            if outcome.cancelled or self.is_cancelled(job.run_id):
                return ArtifactReply(status="cancelled", error="the run was cancelled")
            if outcome.timed_out:
                return self._failed(job, f"the build timed out after {timeout:g}s", logs)
            if outcome.limit:
                return self._failed(job, f"the build exceeded its {outcome.limit} limit", logs)
            if outcome.exit_code != 0:
                return self._failed(job, f"the build failed with exit code {outcome.exit_code}", logs)
            root = workspace.path.resolve()
            product = (root / cwd / job.path).resolve()
            if not product.is_relative_to(root):
                return self._failed(job, f"path {job.path!r} points outside the checkout", logs)
            try:
                packaged = await asyncio.to_thread(package, job.type, job.name, product, scratch)
            except PackageError as exc:
                return self._failed(job, f"path {job.path!r}: {exc}", logs)
            return await self._push(job, packaged, logs)
        finally:
            await workspace.release()

    async def _push(self, job: ArtifactJob, packaged: Packaged, logs: str | None) -> ArtifactReply:
        try:
            ref = await asyncio.to_thread(
                self.store.push,
                tracking_repository(job),
                job.commit_sha,
                packaged.blobs,
                packaged.manifest,
                packaged.media_type,
            )
        except (OciError, OSError) as exc:
            return self._failed(job, f"the platform registry refused the push: {exc}", logs)
        assert ref.digest is not None
        try:
            published = await self.destinations.publish(job, packaged, ref.digest)
        except PublishError as exc:
            return self._failed(job, f"publishing failed: {exc}", logs)
        result = ArtifactResult(
            name=job.name,
            type=job.type,
            digest=ref.digest,
            size=packaged.size,
            tracking_oci_uri=str(dataclasses.replace(ref, digest=None)),
            published_uris=published,
            logs_s3_key=logs,
        )
        log.info("artifact.built", run_id=job.run_id, project=job.project, artifact=job.name, digest=ref.digest)
        return ArtifactReply(status="success", result=result)

    @staticmethod
    def _env(job: ArtifactJob) -> dict[str, str]:
        """The build's whole environment, like a step's (sandbox.ENVIRONMENT_ALLOW_LIST)."""
        return {
            "CI": "true",
            "FORGE_RUN_ID": job.run_id,
            "FORGE_TASK_ID": job.task_id,
            "FORGE_REPOSITORY": job.repository,
            "FORGE_COMMIT_SHA": job.commit_sha,
            "FORGE_BRANCH": job.branch,
            "FORGE_TAG": job.tag or "",
            "FORGE_PHASE": "artifacts",
            "FORGE_PROJECT": job.project,
            "FORGE_STEP": job.name,
            "FORGE_ARTIFACT": job.name,
            "FORGE_ARTIFACT_TYPE": job.type,
            # Relative to the project directory (the build's working directory).
            "FORGE_ARTIFACT_PATH": job.path,
        }
