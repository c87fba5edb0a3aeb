from litestar import Litestar

from forge_common.github import GitHubSender
from forge_common.http import AppSpec, build_app
from forge_common.repositories import RepositoryAllowList
from forge_common.runtime import Runtime

from .api import ROUTES, SERVICE_KEY
from .oci import make_publisher
from .runs import PipelineRuns, SkipRunCheck
from .service import ReleaseService
from .settings import Settings
from .store import UnitOfWork


def create_app(settings: Settings) -> Litestar:
    async def start(runtime: Runtime) -> None:
        runs = (
            PipelineRuns(settings.pipeline_url, settings.pipeline_timeout)
            if settings.verify_pipeline_runs
            else SkipRunCheck()
        )
        runtime.extras[SERVICE_KEY] = ReleaseService(
            UnitOfWork(runtime.pool), make_publisher(settings), runs, RepositoryAllowList(settings.repositories)
        )
        # Commit statuses of created releases, from the GitHub outbox (forge_common.github).
        sender = runtime.extras["github_sender"] = GitHubSender(
            runtime.pool, "release", "release", settings.github_config("release")
        )
        sender.start()

    async def stop(runtime: Runtime) -> None:
        sender = runtime.extras.get("github_sender")
        if isinstance(sender, GitHubSender):
            await sender.stop()
        svc = runtime.extras.get(SERVICE_KEY)
        if isinstance(svc, ReleaseService):
            await svc.publisher.close()
            await svc.runs.close()

    return build_app(
        AppSpec(
            service="release",
            settings=settings,
            routes=ROUTES,
            schema="release",
            migrations="forge_release.migrations",
            on_startup=[start],
            on_shutdown=[stop],
            description="Releases: numbered, immutable snapshots of a project at a commit, published as OCI artifacts.",
        )
    )
