"""``python -m pyrepl3_kernel``: run the kernel, or install its kernelspec.

The first worker is started before the kernel's heavy imports, so both
processes import in parallel (see `session.prestart`).
"""

from __future__ import annotations

import sys


def _connection_file(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg in ("-f", "--f") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(("-f=", "--f=", "--connection_file=", "--connection-file=")):
            return arg.split("=", 1)[1]
    return None


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] in ("install", "uninstall"):
        from .kernelspec import main as kernelspec_main

        sys.exit(kernelspec_main(argv))
    if not any(arg in ("-h", "--help", "--help-all") for arg in argv):
        from .session import prestart

        prestart.begin(_connection_file(argv))

    from .app import launch_new_instance

    launch_new_instance()


if __name__ == "__main__":
    main()
