from litestar import Litestar

from forge_common.http import AppSpec, build_app

from .api import ROUTES
from .settings import Settings


def create_app(settings: Settings) -> Litestar:
    return build_app(
        AppSpec(
            service="deployment",
            settings=settings,
            routes=ROUTES,
            schema="deployment",
            migrations="forge_deployment.migrations",
        )
    )
