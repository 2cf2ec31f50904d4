"""Entry point of a worker process: ``python -m pyrepl3_kernel.worker``."""

from __future__ import annotations

import argparse

from . import bootstrap


def main() -> None:
    bootstrap.ignore_sigint_until_ready()
    parser = argparse.ArgumentParser(prog="python -m pyrepl3_kernel.worker")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--bootstrap-fd", type=int, required=True)
    args = parser.parse_args()
    bootstrap.arm_parent_death(args.parent_pid)
    bootstrap.fork_group_guard()

    # The slow imports overlap with the kernel's own start-up; the options
    # arrive once the kernel has read its configuration.
    from .main import run

    run(bootstrap.read_bootstrap(args.bootstrap_fd))


if __name__ == "__main__":
    main()
