"""Fixtures that start one real kernel per test and prove it left nothing behind.

The kernelspec comes from `PYREPL3_TEST_KERNEL` (default `pyrepl3`), so the
same tests can run against ipykernel's `python3` for comparison.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from kernel_driver import KernelDriver
from raw_shell import RawShell

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")
STARTUP_TIMEOUT = 60.0  # seconds; a cold start on a busy two-core machine
EXIT_TIMEOUT = 5.0  # seconds the kernel's processes get to exit after shutdown

_failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember a failed setup or call so teardown can kill instead of asking."""
    report = yield
    if report.failed:
        item.stash[_failed_key] = True
    return report


@pytest.fixture
def kernel_manager(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[KernelManager]:
    """A started kernel with a private IPYTHONDIR; shut down and reaped afterwards.

    A test may parametrize this fixture indirectly with a list of extra kernel
    command-line arguments, e.g. ``["--SessionPool.interrupt_grace=1"]``.
    """
    extra_arguments = list(getattr(request, "param", ()))
    env = dict(os.environ)
    # ipykernel stops capturing fds 1/2 when it sees this variable.
    env.pop("PYTEST_CURRENT_TEST", None)
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    manager = KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(env=env, extra_arguments=extra_arguments)
    try:
        yield manager
    finally:
        watched = _watch_process_tree(manager)
        try:
            manager.shutdown_kernel(now=request.node.stash.get(_failed_key, False))
        finally:
            _assert_all_exit(watched)


@pytest.fixture
def kernel_client(kernel_manager: KernelManager) -> Iterator[BlockingKernelClient]:
    """A blocking client with its channels started and the kernel ready."""
    client = kernel_manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        yield client
    finally:
        client.stop_channels()


@pytest.fixture
def driver(
    kernel_manager: KernelManager, kernel_client: BlockingKernelClient
) -> KernelDriver:
    return KernelDriver(kernel_manager, kernel_client)


@pytest.fixture
def raw_shell(kernel_manager: KernelManager) -> Iterator[RawShell]:
    shell = RawShell(kernel_manager.get_connection_info())
    try:
        yield shell
    finally:
        shell.close()


def _watch_process_tree(manager: KernelManager) -> dict[int, psutil.Process]:
    """A pidfd for the kernel process and each of its descendants, taken now.

    Holding the pidfd pins the process itself, so a pid reused later can never
    be mistaken for it (or killed in its place).
    """
    pid = getattr(manager.provisioner, "pid", None)
    if not isinstance(pid, int):
        return {}  # psutil.Process(None) would be this very process
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    watched = {}
    for process in tree:
        try:
            watched[os.pidfd_open(process.pid)] = process
        except ProcessLookupError:
            continue  # it exited between the listing and now
    return watched


def _assert_all_exit(watched: dict[int, psutil.Process]) -> None:
    """Wait up to EXIT_TIMEOUT for the watched processes to exit; kill the rest.

    A pidfd turns readable when its process exits, reaped or not, so an orphan
    left a zombie (nobody here reaps it) counts as gone. Any survivor is killed
    through its pidfd and fails the test.
    """
    poller = select.poll()
    for pidfd in watched:
        poller.register(pidfd, select.POLLIN)
    alive = dict(watched)
    deadline = time.monotonic() + EXIT_TIMEOUT
    while alive and (remaining := deadline - time.monotonic()) > 0:
        for pidfd, _event in poller.poll(max(1, int(remaining * 1000))):
            poller.unregister(pidfd)
            del alive[pidfd]
    left = [_describe(process) for process in alive.values()]
    for pidfd in alive:
        # One that exited after the deadline needs no killing.
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    for pidfd in watched:
        os.close(pidfd)
    if left:
        pytest.fail(f"kernel processes still ran after shutdown: {', '.join(left)}")


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:80]}"
    except psutil.Error:
        return str(process.pid)
