"""What a worker process does before it can run any code.

Order matters here: the SIGINT handler comes first (a worker must never
inherit an ignored SIGINT), then the parent-death signal (tied to the
thread that spawned us, which is the kernel's main thread), then the group
guard, and only then the slow imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
from collections.abc import Iterator
from typing import Any

__all__ = [
    "arm_parent_death",
    "fork_group_guard",
    "read_bootstrap",
    "redirect_fds",
    "sigint_blocked",
]

PR_SET_PDEATHSIG = 1  # prctl option number from <linux/prctl.h>
_IOLBF = 1  # setvbuf mode "line buffered" from <stdio.h> (glibc, musl)


def ignore_sigint_until_ready() -> None:
    """Drop SIGINT until the executor installs its real handler."""
    signal.signal(signal.SIGINT, lambda signum, frame: None)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread meanwhile; threads started inside inherit it.

    The kernel's interrupt is a process-wide SIGINT, and Linux may hand it to
    any thread that does not block it. Only the main thread runs Python's
    handler, and a main thread asleep in a system call (`recv`, `sleep`) is
    woken only when the signal lands on it. So the worker's own threads are
    started with SIGINT blocked, and the signal can only go to the main one.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def arm_parent_death(parent_pid: int) -> None:
    """Die with SIGKILL when the kernel dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def fork_group_guard() -> None:
    """Fork a tiny process that kills our process group once we are gone.

    The parent-death signal kills only the worker; children that user code
    started (a `sleep 60`, a multiprocessing pool) are in the worker's group
    and would outlive it. The guard waits on a pidfd of the worker, an event,
    and then kills the whole group, itself included.
    """
    worker = os.getpid()
    pidfd = os.pidfd_open(worker)
    if os.fork() != 0:
        os.close(pidfd)
        return
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, pidfd)
        os.closerange(pidfd + 1, 65536)
        select.select([pidfd], [], [])
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)


def read_bootstrap(fd: int) -> dict[str, Any]:
    """Read the kernel's instructions (endpoint, key, options) and close `fd`."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    data: dict[str, Any] = json.loads(b"".join(chunks))
    return data


def redirect_fds() -> tuple[int, dict[str, int]]:
    """Point fds 1 and 2 at fresh pipes; return the crash fd and the read ends.

    The crash fd is a private copy of the original fd 2 (the kernel's pipe),
    kept for `faulthandler` and fatal messages that must survive us.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    crash_fd = os.dup(2)
    os.set_inheritable(crash_fd, False)
    readers: dict[str, int] = {}
    for name, fd in (("stdout", 1), ("stderr", 2)):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        readers[name] = read_end
    # C stdio buffers a pipe whole; line by line, as on a terminal, C text
    # reaches the pipe at each newline and keeps its place among prints.
    libc = ctypes.CDLL(None)
    with contextlib.suppress(ValueError):  # a libc without a `stdout` symbol
        libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stdout"), None, _IOLBF, 0)
    return crash_fd, readers
