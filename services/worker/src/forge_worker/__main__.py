"""Placeholder until the worker lands: stays up so the stack can supervise it."""

import signal
import time


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
