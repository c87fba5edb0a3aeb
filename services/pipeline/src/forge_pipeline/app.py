from litestar import Litestar

from forge_common.http import AppSpec, build_app
from forge_common.jobs import JobSettings
from forge_common.runtime import Runtime
from forge_common.settings import load

from . import execution_api, github
from .api import ROUTES
from .dispatch import Dispatcher, DispatcherSettings, apply_log_lifecycle
from .settings import Settings

DISPATCHER_KEY = "dispatcher"


def create_app(
    settings: Settings,
    dispatcher_settings: DispatcherSettings | None = None,
    job_settings: JobSettings | None = None,
) -> Litestar:
    """``dispatcher_settings`` and ``job_settings`` default to ``FORGE_DISPATCHER_*`` and
    ``FORGE_JOB_*`` from the environment, read here so that an invalid value stops the start."""
    dispatcher_settings = dispatcher_settings or load(DispatcherSettings)
    job_settings = job_settings or load(JobSettings)

    async def start_dispatcher(runtime: Runtime) -> None:
        await apply_log_lifecycle(runtime)
        if not settings.dispatcher_enabled:
            return
        dispatcher = Dispatcher(runtime, dispatcher_settings, job_settings)
        await dispatcher.start()
        runtime.extras[DISPATCHER_KEY] = dispatcher

    async def stop_dispatcher(runtime: Runtime) -> None:
        dispatcher = runtime.extras.pop(DISPATCHER_KEY, None)
        if isinstance(dispatcher, Dispatcher):
            await dispatcher.stop()

    return build_app(
        AppSpec(
            service="pipeline",
            settings=settings,
            routes=[*ROUTES, *execution_api.ROUTES],
            schema="pipeline",
            migrations="forge_pipeline.migrations",
            on_startup=[github.start, start_dispatcher],
            on_shutdown=[stop_dispatcher, github.stop],
            description="Pipeline runs, their phases, tasks and steps; GitHub webhooks and commit statuses.",
        )
    )
