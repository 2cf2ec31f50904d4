"""Kernels started with extra options, and the processes behind them.

The fixtures in conftest.py start the kernelspec as installed. The pool and
worker-death tests also need traitlets options on the kernel's command line
(`--SessionPool.spares=0`, ...) and need to see the kernel's worker
processes. `running_kernel` starts such a kernel with a private IPYTHONDIR
and, on the way out, shuts it down and fails if any process of its tree
(workers, spares, group guards, children of user code) outlived it.

Polling psutil is fine here: every loop has a deadline, and the kernel under
test is what must not poll.
"""

from __future__ import annotations

__all__ = [
    "KernelUnderTest",
    "input_count",
    "is_gone",
    "process_tree",
    "reap",
    "running_kernel",
    "wait_until",
    "worker_processes",
]

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.manager import KernelManager
from kernel_driver import Execution, KernelDriver

KERNEL_NAME = "pyrepl3"  # these tests look at pyrepl3's own worker processes
WORKER_MODULE = "pyrepl3_kernel.worker"  # argv element of every worker process
STARTUP_TIMEOUT = 60.0  # s: a cold start on a busy two-core machine
EXIT_TIMEOUT = 10.0  # s: processes of a kernel may take this long to go after shutdown
POLL_INTERVAL = 0.05  # s: between two looks at the process table


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> float:
    """Poll `predicate` until it holds; return the seconds it took.

    Raises:
        AssertionError: it still did not hold after `timeout` seconds (`what`
            says what was awaited).
    """
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def worker_processes(kernel: psutil.Process) -> list[psutil.Process]:
    """Live worker processes that are direct children of `kernel`.

    A worker's group guard is a fork of the worker, so it is a grandchild
    of the kernel and is not counted.
    """
    found = []
    for child in kernel.children():
        with contextlib.suppress(psutil.Error):
            if WORKER_MODULE in child.cmdline() and not is_gone(child):
                found.append(child)
    return found


def process_tree(kernel: psutil.Process) -> list[psutil.Process]:
    """`kernel` and every descendant alive now."""
    try:
        return [kernel, *kernel.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def is_gone(process: psutil.Process) -> bool:
    """The process exited (a zombie nobody reaped yet counts as exited)."""
    try:
        # is_running() compares creation times, so a reused pid is not "it".
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:90]}"
    except psutil.Error:
        return str(process.pid)


@dataclass
class KernelUnderTest:
    """A started kernel, a driver on its channels, and its OS process."""

    manager: KernelManager
    driver: KernelDriver
    process: psutil.Process

    @property
    def client(self) -> Any:
        return self.driver.client

    def workers(self) -> list[psutil.Process]:
        return worker_processes(self.process)

    def worker_pids(self) -> set[int]:
        return {worker.pid for worker in self.workers()}

    def tree(self) -> list[psutil.Process]:
        return process_tree(self.process)

    def run(self, code: str, timeout: float = 30.0) -> Execution:
        return self.driver.execute(code, timeout=timeout)

    def worker_pid(self) -> int:
        """The pid of the worker that runs the next cell (runs one cell)."""
        cell = self.run("import os as _os; print(_os.getpid())")
        assert cell.status == "ok", cell.reply
        return int(cell.stdout.strip())

    def wait_for_full_pool(self, workers: int = 2, timeout: float = 30.0) -> None:
        """Wait until `workers` worker processes run and every spare is warm.

        Warmth is read from `%pyrepl3 stats` (each look runs a cell).
        """
        wait_until(
            lambda: len(self.workers()) == workers,
            timeout,
            f"{workers} worker processes (have {self.worker_pids()})",
        )
        spares = workers - 1
        wait_until(
            lambda: f"spares_warm: {spares}\n" in self.run("%pyrepl3 stats").stdout,
            timeout,
            f"{spares} warm spare(s)",
            interval=0.2,
        )


def input_count(execution: Execution) -> int | None:
    """The execution count the kernel announced in execute_input."""
    for message in execution.iopub:
        if message.msg_type == "execute_input":
            count = message.content.get("execution_count")
            return count if isinstance(count, int) else None
    return None


@contextlib.contextmanager
def running_kernel(
    ipython_dir: Path, options: Sequence[str] = ()
) -> Iterator[KernelUnderTest]:
    """Start a pyrepl3 kernel with `options` appended to its command line.

    On exit the kernel is shut down (killed if it does not answer) and every
    process of its tree seen at that moment must exit within EXIT_TIMEOUT;
    survivors are killed and the exit fails.
    """
    env = dict(os.environ)
    # ipykernel-style capture turns itself off when it sees this variable.
    env.pop("PYTEST_CURRENT_TEST", None)
    env["IPYTHONDIR"] = str(ipython_dir)
    manager = KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(env=env, extra_arguments=list(options))
    client = manager.client()
    tree: list[psutil.Process] = []
    failed = False
    try:
        process = psutil.Process(manager.provisioner.pid)  # type: ignore[union-attr]
        client.start_channels()
        client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        kernel = KernelUnderTest(manager, KernelDriver(manager, client), process)
        yield kernel
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(psutil.Error, AttributeError):
            root = psutil.Process(manager.provisioner.pid)  # type: ignore[union-attr]
            tree = [root, *root.children(recursive=True)]
        client.stop_channels()
        try:
            if manager.has_kernel:
                # A kernel that failed its test may not answer: kill it outright.
                manager.shutdown_kernel(now=failed)
        finally:
            # A failure already on its way out is not masked by this report.
            reap(tree, report=not failed)


def reap(tree: list[psutil.Process], report: bool) -> None:
    """Wait for every process of `tree` to exit; kill and report the survivors."""
    deadline = time.monotonic() + EXIT_TIMEOUT
    alive = [p for p in tree if not is_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        alive = [p for p in alive if not is_gone(p)]
    left = [describe(p) for p in alive]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()  # psutil refuses if the pid now names another process
    if left and report:
        raise AssertionError(f"kernel processes still ran after shutdown: {left}")
