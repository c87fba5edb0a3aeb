from litestar import Litestar

from forge_common.jobs import JobSettings
from forge_common.server import serve
from forge_common.settings import load

from .app import create_app
from .dispatch import ArgoSettings, DispatcherSettings
from .settings import Settings


def _app(settings: Settings) -> Litestar:
    # The dispatcher's, the jobs' and the executor's settings are read here, with the service's,
    # so that an invalid FORGE_DISPATCHER_*, FORGE_JOB_*, FORGE_EXECUTOR or FORGE_ARGO_* value
    # stops the start (serve reports it).
    return create_app(settings, load(DispatcherSettings), load(JobSettings), load(ArgoSettings))


def main() -> None:
    serve("pipeline", Settings, _app)


if __name__ == "__main__":
    main()
