"""Run benchmarks: ``python -m bench`` runs every script under ``bench/``, one after the other,
each in its own process (each starts its own test platform); ``python -m bench NAME [ARGS...]``
runs one with its own arguments (``python -m bench gateway_overhead --requests 500``).
``python -m bench --list`` names them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).parent
_NOT_SCRIPTS = {"__init__", "__main__"}


def scripts() -> list[str]:
    return sorted(
        p.stem for p in _HERE.glob("*.py") if p.stem not in _NOT_SCRIPTS and not p.stem.startswith(("_", "common"))
    )


def run(name: str, args: list[str]) -> int:
    print(f"=== bench.{name} {' '.join(args)}".rstrip(), flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", f"bench.{name}", *args], cwd=_HERE.parent)
    print(f"=== bench.{name}: exit {code} after {time.monotonic() - started:.0f}s\n", flush=True)
    return code


def main(argv: list[str]) -> int:
    available = scripts()
    if argv[:1] in (["--list"], ["-l"]):
        print("\n".join(available))
        return 0
    if argv[:1] in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    if argv:
        name = argv[0].removeprefix("bench.").removesuffix(".py")
        if name not in available:
            print(f"no benchmark {name!r}; available: {', '.join(available)}", file=sys.stderr)
            return 2
        return run(name, argv[1:])
    failed = [name for name in available if run(name, []) != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
