from forge_common.server import serve

from .app import create_app
from .settings import Settings


def main() -> None:
    serve("deployment", Settings, create_app)


if __name__ == "__main__":
    main()
