from litestar import Litestar

from forge_common.http import AppSpec, build_app

from . import dispatcher, execution_api, github
from .api import ROUTES
from .settings import Settings


def create_app(settings: Settings) -> Litestar:
    return build_app(
        AppSpec(
            service="pipeline",
            settings=settings,
            routes=[*ROUTES, *execution_api.ROUTES],
            schema="pipeline",
            migrations="forge_pipeline.migrations",
            on_startup=[github.start, dispatcher.start],
            on_shutdown=[dispatcher.stop, github.stop],
            description="Pipeline runs, their phases, tasks and steps; GitHub webhooks and commit statuses.",
        )
    )
