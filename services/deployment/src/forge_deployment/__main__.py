import sys

from forge_common.server import serve

from .app import create_app
from .settings import Settings


def main() -> None:
    if sys.argv[1:2] == ["migrate-gitops"]:
        from .migrate_gitops import main as migrate

        raise SystemExit(migrate(sys.argv[2:]))
    serve("deployment", Settings, create_app)


if __name__ == "__main__":
    main()
