from litestar import Litestar

from forge_common.jobs import JobSettings
from forge_common.server import serve
from forge_common.settings import load

from .app import create_app
from .dispatch import DispatcherSettings
from .settings import Settings


def _app(settings: Settings) -> Litestar:
    # The dispatcher's and the jobs' settings are read here, with the service's, so that an
    # invalid FORGE_DISPATCHER_* or FORGE_JOB_* value stops the start (serve reports it).
    return create_app(settings, load(DispatcherSettings), load(JobSettings))


def main() -> None:
    serve("pipeline", Settings, _app)


if __name__ == "__main__":
    main()
