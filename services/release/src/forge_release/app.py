from litestar import Litestar

from forge_common.http import AppSpec, build_app

from .api import ROUTES
from .settings import Settings


def create_app(settings: Settings) -> Litestar:
    return build_app(
        AppSpec(
            service="release",
            settings=settings,
            routes=ROUTES,
            schema="release",
            migrations="forge_release.migrations",
        )
    )
