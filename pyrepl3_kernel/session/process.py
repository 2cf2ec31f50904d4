"""How a worker process starts, ends and is waited on.

A narrow, process-like interface: `spawn` starts the worker with
`subprocess.Popen` (so it works before any event loop exists, which lets the
kernel start its first worker before its own heavy imports), and
`WorkerProcess.watch` turns the process's exit and its crash stream into
events on an asyncio loop: a pidfd registered with the loop, and readers of
the worker's original stdout/stderr pipes. Nothing is polled.

Spawn from the thread that will run the kernel's loop: the worker's
parent-death signal is tied to the thread that created it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "describe_exit", "spawn"]

logger = logging.getLogger(__name__)

CRASH_TAIL_LINES = (
    200  # lines of the crash stream kept: a faulthandler dump of all threads
)
MAX_SHOWN_LINES = 40  # lines shown to the user when there is no fatal-error marker
CRASH_READ_SIZE = 65536  # bytes per read of the crash pipes

# Variables the worker must not see: they point at the kernel's own channels.
_PRIVATE_ENV = ("JPY_PARENT_PID", "JPY_INTERRUPT_EVENT", "JPY_SESSION_NAME")


def worker_environment(connection_file: str | None) -> dict[str, str]:
    """The user's environment minus anything that leads to the kernel's sockets."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _PRIVATE_ENV
        and not (connection_file and connection_file in value)
    }
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


def spawn(connection_file: str | None = None) -> WorkerProcess:
    """Start a worker; it waits for `WorkerProcess.send_options` after its imports.

    The options (endpoint, key, configuration) travel over a private pipe, so
    the key never appears on a command line or in the environment.
    """
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyrepl3_kernel.worker",
                "--parent-pid",
                str(os.getpid()),
                "--bootstrap-fd",
                str(read_end),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(read_end,),
            process_group=0,
            env=worker_environment(connection_file),
            cwd=os.getcwd(),
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return WorkerProcess(process, write_end)


def describe_exit(returncode: int | None) -> str:
    """A sentence for how a process ended, e.g. "was killed by SIGSEGV"."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class WorkerProcess:
    """One worker OS process, watched from an asyncio loop.

    `exited` is set once the process has been reaped and its crash stream
    read to the end (or for a bounded time, see `CRASH_DRAIN_S`).
    """

    def __init__(self, popen: subprocess.Popen[bytes], options_fd: int) -> None:
        self._popen = popen
        self._options_fd: int | None = options_fd
        self.pid = popen.pid
        self.reaped = asyncio.Event()  # the process is gone (exit status known)
        self.exited = asyncio.Event()  # ... and its crash stream was read to the end
        self._tail: collections.deque[str] = collections.deque(maxlen=CRASH_TAIL_LINES)
        self._partial: dict[int, bytes] = {}
        self._pidfd: int | None = None
        self._open_pipes: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.oom_before = read_oom_kills()

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} returncode={self.returncode}>"

    def send_options(self, options: dict[str, Any]) -> None:
        """Hand the worker its options (once); a dead worker is noticed later."""
        fd, self._options_fd = self._options_fd, None
        if fd is None:
            raise RuntimeError("worker options were already sent")
        try:
            with os.fdopen(fd, "wb") as pipe:
                pipe.write(json.dumps(options).encode())
        except BrokenPipeError:
            logger.warning("worker exited before reading its options pid=%s", self.pid)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start turning exit and crash output into events on `loop` (its thread)."""
        self._loop = loop
        for stream in (self._popen.stdout, self._popen.stderr):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self._open_pipes.add(fd)
            loop.add_reader(fd, self._read_crash, fd)
        self._pidfd = os.pidfd_open(self.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    def _read_crash(self, fd: int) -> None:
        try:
            data = os.read(fd, CRASH_READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            assert self._loop is not None
            self._loop.remove_reader(fd)
            self._open_pipes.discard(fd)
            rest = self._partial.pop(fd, b"")
            if rest:
                self._keep_line(rest)
            self._maybe_done()
            return
        lines = (self._partial.pop(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self._keep_line(line)

    def _keep_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._tail.append(text)
        logger.debug("worker output pid=%s line=%s", self.pid, text)

    def _on_exit(self) -> None:
        assert self._loop is not None and self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._popen.wait()
        # The whole group goes with the worker: children of user code too.
        self.kill_group()
        self.reaped.set()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._pidfd is None and self.returncode is not None and not self._open_pipes:
            self.exited.set()

    def crash_text(self) -> str:
        """The last lines the worker wrote to its crash stream.

        From the last "Fatal Python error" on, if faulthandler wrote one: that
        line names the fault and is followed by the stacks of the crash.
        """
        lines = [line for line in self._tail if line.strip()]
        for index in range(len(lines) - 1, -1, -1):
            if lines[index].startswith("Fatal Python error"):
                return "\n".join(lines[index:])
        return "\n".join(lines[-MAX_SHOWN_LINES:])

    def is_oom_kill(self) -> bool:
        """Whether the cgroup's OOM killer struck since this worker started."""
        after = read_oom_kills()
        return (
            after is not None
            and self.oom_before is not None
            and after > self.oom_before
        )

    def signal_group(self, signum: int) -> bool:
        """Send `signum` to the worker's process group; False if it is gone."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def kill_group(self) -> None:
        self.signal_group(signal.SIGKILL)

    def close_pipes(self) -> None:
        """Stop reading the crash stream (after exit, when EOF is late)."""
        if self._loop is not None:
            for fd in list(self._open_pipes):
                self._loop.remove_reader(fd)
        self._open_pipes.clear()
        for stream in (self._popen.stdout, self._popen.stderr):
            if stream is not None:
                stream.close()
        self._maybe_done()


def read_oom_kills() -> int | None:
    """The `oom_kill` count of this process's cgroup (v2), if readable."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        path = line.split(":", 2)[2]
        events = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events"
        for entry in events.read_text().splitlines():
            key, _, value = entry.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, IndexError, ValueError):
        return None
    return None
