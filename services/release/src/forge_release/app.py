from litestar import Litestar

from forge_common.http import AppSpec, build_app
from forge_common.runtime import Runtime

from .api import ROUTES
from .oci import make_publisher
from .service import ReleaseService
from .settings import Settings


def create_app(settings: Settings) -> Litestar:
    async def start(runtime: Runtime) -> None:
        runtime.extras["releases"] = ReleaseService(runtime.pool, make_publisher(settings))

    async def stop(runtime: Runtime) -> None:
        svc = runtime.extras.get("releases")
        if isinstance(svc, ReleaseService):
            await svc.publisher.close()

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
