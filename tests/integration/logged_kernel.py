"""A real kernel whose stderr is kept, so tests can read what it logged.

The fixtures in conftest.py leave the kernel's stderr alone. Tests of hostile
input must check that every refusal was logged with its reason and that no
traceback was printed, and tests of process hygiene need the kernel started
in a chosen directory with a chosen environment. `logged_kernel` does both,
and on the way out shuts the kernel down and fails if any process of its tree
(workers, spares, their group guards) outlived it.

Polling psutil and the file system is fine here: every loop has a deadline,
and the kernel under test is what must not poll.
"""

from __future__ import annotations

__all__ = [
    "WORKER_MODULE",
    "LoggedKernel",
    "is_gone",
    "logged_kernel",
    "wait_until",
]

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from kernel_driver import KernelDriver
from kernel_processes import (
    WORKER_MODULE,
    is_gone,
    process_tree,
    reap,
    wait_until,
    worker_processes,
)

KERNEL_NAME = "pyrepl3"  # these tests look at pyrepl3's own workers and sockets
PRIVATE_DIR_MARK = "/pyrepl3-"  # the private directory's name starts so
STARTUP_TIMEOUT = 60.0  # s: a cold start on a busy two-core machine


@dataclass
class LoggedKernel:
    """A started kernel, a driver on its channels, its process and its stderr."""

    manager: KernelManager
    client: BlockingKernelClient
    driver: KernelDriver
    process: psutil.Process
    stderr_path: Path

    def log_mark(self) -> int:
        """A position in the kernel's stderr; `log_since` reads from there."""
        return self.stderr_path.stat().st_size

    def log_since(self, mark: int) -> str:
        with self.stderr_path.open("rb") as stream:
            stream.seek(mark)
            return stream.read().decode("utf-8", "replace")

    def log(self) -> str:
        return self.log_since(0)

    def tree(self) -> list[psutil.Process]:
        return process_tree(self.process)

    def workers(self) -> list[psutil.Process]:
        return worker_processes(self.process)

    def socket_paths(self) -> set[str]:
        """Paths of the Unix sockets the kernel bound for its workers."""
        return {
            str(conn.laddr)
            for conn in self.process.net_connections(kind="unix")
            if conn.laddr and PRIVATE_DIR_MARK in str(conn.laddr)
        }

    def private_dir(self) -> Path:
        """The kernel's private directory, found through its bound sockets."""
        dirs = {os.path.dirname(path) for path in self.socket_paths()}
        assert len(dirs) == 1, f"expected one private directory, found {dirs}"
        return Path(dirs.pop())


@contextlib.contextmanager
def logged_kernel(
    workdir: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_arguments: Sequence[str] = (),
) -> Iterator[LoggedKernel]:
    """Start a pyrepl3 kernel whose stderr goes to a file in `workdir`.

    `env` adds variables to the test's environment; `cwd` is the kernel's
    working directory. On exit the kernel is asked to shut down (and killed
    if it does not) and every process of its tree seen then must exit within
    `kernel_processes.EXIT_TIMEOUT`; survivors are killed and the exit fails
    (unless the body already failed).
    """
    kernel_env = dict(os.environ)
    # ipykernel-style capture turns itself off when it sees this variable.
    kernel_env.pop("PYTEST_CURRENT_TEST", None)
    kernel_env["IPYTHONDIR"] = str(workdir / "ipython")
    kernel_env.update(env or {})
    stderr_path = workdir / "kernel-stderr.txt"
    manager = KernelManager(kernel_name=KERNEL_NAME)
    with stderr_path.open("wb") as stderr:
        manager.start_kernel(
            env=kernel_env,
            cwd=str(cwd or workdir),
            stderr=stderr,
            extra_arguments=list(extra_arguments),
        )
    client = manager.client()
    failed = False
    try:
        process = psutil.Process(manager.provisioner.pid)
        client.start_channels()
        client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        driver = KernelDriver(manager, client)
        yield LoggedKernel(manager, client, driver, process, stderr_path)
    except BaseException:
        failed = True
        raise
    finally:
        _stop(manager, client, report=not failed)


def _stop(manager: KernelManager, client: BlockingKernelClient, report: bool) -> None:
    tree: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error, AttributeError, TypeError):
        root = psutil.Process(manager.provisioner.pid)
        tree = [root, *root.children(recursive=True)]
    client.stop_channels()
    try:
        if manager.has_kernel:
            # Even after a failure, ask first: a killed kernel cannot remove its
            # private directory. jupyter_client kills it if it does not answer.
            manager.shutdown_kernel(now=False)
        else:
            manager.cleanup_resources()
    finally:
        reap(tree, report)
