"""``create_app(settings)``: the one place the pipeline service is put together."""

from litestar import Litestar

from forge_common.http import AppSpec, build_app
from forge_common.runtime import Runtime

from . import dispatcher, webhooks
from .api import ROUTES, SERVICE_KEY
from .cancel import CancelNotifier
from .github import CommitStatusSender
from .presign import Presigner
from .service import PipelineService
from .settings import Settings
from .store import UnitOfWork

DESCRIPTION = "Pipeline runs, their phases, tasks and steps; GitHub webhooks and commit statuses."
_SENDER_KEY = "pipeline.commit_statuses"


def create_app(settings: Settings) -> Litestar:
    presigner = Presigner(
        settings.s3_url or None, settings.s3_bucket, settings.s3_access_key, settings.s3_secret_key, settings.s3_region
    )

    async def start(runtime: Runtime) -> None:
        uow = UnitOfWork(runtime.pool)
        runtime.extras[SERVICE_KEY] = PipelineService(
            uow,
            max_active_runs=settings.max_active_runs_per_repository,
            presigner=presigner,
            logs_url_ttl=int(settings.logs_url_ttl),
            publish_cancel=CancelNotifier(runtime.nc, runtime.names),
        )
        runtime.extras[webhooks.HANDLER_KEY] = webhooks.WebhookHandler(
            uow, settings.github_webhook_secret, settings.max_active_runs_per_repository
        )
        sender = runtime.extras[_SENDER_KEY] = CommitStatusSender(uow, settings)
        sender.start()

    async def stop(runtime: Runtime) -> None:
        sender = runtime.extras.pop(_SENDER_KEY, None)
        if isinstance(sender, CommitStatusSender):
            await sender.stop()

    return build_app(
        AppSpec(
            service="pipeline",
            settings=settings,
            routes=ROUTES,
            schema="pipeline",
            migrations="forge_pipeline.migrations",
            on_startup=[start, dispatcher.start],
            on_shutdown=[dispatcher.stop, stop],
            description=DESCRIPTION,
        )
    )
