"""``create_app(settings)``: the one place the pipeline service is put together."""

from litestar import Litestar

from forge_common.client import ServiceClient
from forge_common.github import GitHubSender
from forge_common.http import AppSpec, build_app
from forge_common.jobs import JobSettings
from forge_common.repositories import RepositoryAllowList
from forge_common.runtime import Runtime

from . import notify, search, webhooks
from .api import ROUTES, SERVICE_KEY
from .cancel import CancelNotifier
from .dispatch import ArgoSettings, Dispatcher, DispatcherSettings, apply_log_lifecycle
from .live import HUB_KEY, ChangeHub
from .presign import Presigner
from .retention import RunRetention
from .service import PipelineService
from .settings import Settings
from .store import UnitOfWork

DESCRIPTION = (
    "Pipeline runs, their phases, tasks and steps; GitHub webhooks and commit statuses; outgoing webhook subscriptions."
)
DISPATCHER_KEY = "dispatcher"
_SENDER_KEY = "pipeline.commit_statuses"
_RETENTION_KEY = "pipeline.retention"
_WEBHOOKS_KEY = "pipeline.outgoing_webhooks"


# Over 60 lines on purpose: the one place the service is put together; its start and stop hooks
# are closures over the settings and what they build, read side by side.
def create_app(
    settings: Settings,
    dispatcher_settings: DispatcherSettings | None = None,
    job_settings: JobSettings | None = None,
    argo_settings: ArgoSettings | None = None,
) -> Litestar:
    """Every setting is passed in (``__main__`` reads ``FORGE_*``, ``FORGE_DISPATCHER_*``,
    ``FORGE_JOB_*`` and ``FORGE_EXECUTOR`` / ``FORGE_ARGO_*``); nothing here or below reads the
    environment. Absent dispatcher, job or executor settings are their defaults (the OpenAPI
    contract builds the app that way: jobs on the NATS workers)."""
    dispatcher_settings = dispatcher_settings or DispatcherSettings()
    job_settings = job_settings or JobSettings()
    argo_settings = argo_settings or ArgoSettings()
    presigner = Presigner(
        settings.s3_public_url or settings.s3_url or None,
        settings.s3_bucket,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_region,
        settings.s3_session_token,
    )

    async def start(runtime: Runtime) -> None:
        uow = UnitOfWork(runtime.pool)
        runtime.extras[SERVICE_KEY] = PipelineService(
            uow,
            max_active_runs=settings.max_active_runs_per_repository,
            presigner=presigner,
            logs_url_ttl=int(settings.logs_url_ttl),
            publish_cancel=CancelNotifier(runtime.nc, runtime.names),
            repositories=RepositoryAllowList(settings.repositories),
        )
        runtime.extras[webhooks.HANDLER_KEY] = webhooks.WebhookHandler(
            uow,
            settings.github_webhook_secret,
            settings.max_active_runs_per_repository,
            RepositoryAllowList(settings.repositories),
        )
        # Run commit statuses, posted from the GitHub outbox (forge_common.github).
        config = settings.github_config("pipeline", status_context=settings.github_status_context)
        sender = runtime.extras[_SENDER_KEY] = GitHubSender(runtime.pool, "pipeline", "pipeline", config)
        sender.start()
        retention = runtime.extras[_RETENTION_KEY] = RunRetention(
            runtime.pool,
            runtime.s3,
            settings.run_retention,
            settings.run_retention_interval,
            settings.run_retention_batch,
        )
        retention.start()
        # Search: logs of finished steps, indexed in the background (search.LogIndexer).
        indexer = runtime.extras[search.INDEXER_KEY] = search.LogIndexer(
            runtime.pool, runtime.s3, settings.search_log_index_bytes
        )
        indexer.start()
        hub = runtime.extras[HUB_KEY] = ChangeHub(settings.database_url)
        hub.start()
        client = ServiceClient(settings.release_url, "release", timeout=settings.release_timeout)
        runtime.extras[search.RELEASES_KEY] = search.ReleaseSearch(client)
        outgoing = runtime.extras[_WEBHOOKS_KEY] = notify.Webhooks(runtime, settings)
        runtime.extras[notify.SERVICE_KEY] = outgoing.service
        await outgoing.start()

    async def start_dispatcher(runtime: Runtime) -> None:
        await apply_log_lifecycle(runtime)
        if not settings.dispatcher_enabled:
            return
        dispatcher = Dispatcher(runtime, dispatcher_settings, job_settings, argo_settings)
        await dispatcher.start()
        runtime.extras[DISPATCHER_KEY] = dispatcher

    async def stop(runtime: Runtime) -> None:
        releases = runtime.extras.pop(search.RELEASES_KEY, None)
        if isinstance(releases, search.ReleaseSearch):
            await releases.close()
        outgoing = runtime.extras.pop(_WEBHOOKS_KEY, None)
        if isinstance(outgoing, notify.Webhooks):
            await outgoing.stop()
        hub = runtime.extras.pop(HUB_KEY, None)
        if isinstance(hub, ChangeHub):
            await hub.stop()
        dispatcher = runtime.extras.pop(DISPATCHER_KEY, None)
        if isinstance(dispatcher, Dispatcher):
            await dispatcher.stop()
        retention = runtime.extras.pop(_RETENTION_KEY, None)
        if isinstance(retention, RunRetention):
            await retention.stop()
        indexer = runtime.extras.pop(search.INDEXER_KEY, None)
        if isinstance(indexer, search.LogIndexer):
            await indexer.stop()
        sender = runtime.extras.pop(_SENDER_KEY, None)
        if isinstance(sender, GitHubSender):
            await sender.stop()

    return build_app(
        AppSpec(
            service="pipeline",
            settings=settings,
            routes=[*ROUTES, *notify.ROUTES],
            schema="pipeline",
            migrations="forge_pipeline.migrations",
            on_startup=[start, start_dispatcher],
            on_shutdown=[stop],
            description=DESCRIPTION,
        )
    )
