from litestar import Litestar

from forge_common.client import ServiceClient
from forge_common.http import AppSpec, build_app
from forge_common.runtime import Runtime

from .api import ROUTES, SERVICE_KEY
from .releases import HttpReleases
from .service import ApprovalService
from .settings import Settings
from .store import UnitOfWork

DESCRIPTION = (
    "Approvals of releases for environments: who approved which release where, why and until when; "
    "revocation; and the check the deployment service asks before a production deployment."
)


def create_app(settings: Settings) -> Litestar:
    releases = HttpReleases(ServiceClient(settings.release_url, "release", timeout=settings.release_timeout))

    async def start(runtime: Runtime) -> None:
        runtime.extras[SERVICE_KEY] = ApprovalService(
            UnitOfWork(runtime.pool), releases, settings.approval_ttl, github_id_claim=settings.github_id_claim
        )

    async def stop(runtime: Runtime) -> None:
        await releases.close()

    return build_app(
        AppSpec(
            service="approval",
            settings=settings,
            routes=ROUTES,
            schema="approval",
            migrations="forge_approval.migrations",
            on_startup=[start],
            on_shutdown=[stop],
            description=DESCRIPTION,
        )
    )
