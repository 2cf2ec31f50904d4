"""Assembles a worker: capture, I/O thread, shell, executor; then serves."""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import resource
import sys
import traceback
from typing import Any

from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.core.application import BaseIPythonApplication
from IPython.core.history import HistoryManager
from IPython.core.profiledir import ProfileDir
from IPython.core.shellapp import InteractiveShellApp
from jupyter_client.session import extract_header
from traitlets.config import Config

from ..protocol.messages import Kind, WorkerMessage
from .bootstrap import redirect_fds
from .executor import Executor
from .inputs import InputBroker, PromptStdin
from .iothread import IOThread
from .magics import PyRepl3Magics
from .outbox import Outbox
from .shell import WorkerSession, bind_shell
from .streams import WorkerStream

__all__ = ["run"]

logger = logging.getLogger("pyrepl3_kernel.worker")

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class WorkerShellApp(BaseIPythonApplication, InteractiveShellApp):  # type: ignore[misc]
    """Builds the shell from the IPython profile, as ipykernel's app would.

    It reads the same files (``ipython_config.py``, ``ipython_kernel_config.py``),
    then the kernel's own configuration on top, and runs startup files,
    ``exec_lines`` and extensions.
    """

    name = "ipython-kernel"
    classes = [ZMQInteractiveShell, ProfileDir, HistoryManager]

    def init_crash_handler(self) -> None:
        # IPython's crash handler writes report files; the kernel reports
        # worker crashes itself.
        pass

    def init_shell(self) -> None:
        self.shell = ZMQInteractiveShell.instance(
            parent=self, profile_dir=self.profile_dir, kernel=None
        )
        self.shell.configurables.append(self)


def _apply_memory_limit(limit: int | None) -> None:
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _point_faulthandler(crash_fd: int) -> None:
    """Keep fatal tracebacks on the crash fd, even if user code re-enables it."""
    crash_file = os.fdopen(crash_fd, "w", buffering=1, closefd=False)
    enable = faulthandler.enable
    enable(file=crash_file, all_threads=True)

    def enable_on_crash_fd(file: Any = crash_file, all_threads: bool = True) -> None:
        enable(file=crash_file, all_threads=all_threads)

    faulthandler.enable = enable_on_crash_fd  # type: ignore[assignment]


def run(options: dict[str, Any]) -> None:
    """Run a worker until the kernel says stop (or dies)."""
    crash_fd, pipes = redirect_fds()
    crash_stream = os.fdopen(crash_fd, "w", buffering=1, closefd=False)
    try:
        _serve(options, crash_fd, crash_stream, pipes)
    except BaseException:
        # The kernel shows the crash stream's tail to the user.
        traceback.print_exc(file=crash_stream)
        crash_stream.flush()
        os._exit(1)
    os._exit(0)


def _serve(
    options: dict[str, Any], crash_fd: int, crash_stream: Any, pipes: dict[str, int]
) -> None:
    logging.basicConfig(
        stream=crash_stream,
        level=options.get("log_level", logging.WARNING),
        format="[pyrepl3 worker %(process)d] %(levelname)s %(name)s: %(message)s",
    )
    _point_faulthandler(crash_fd)
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)

    outbox = Outbox(window=int(options.get("credit_window", 1 << 20)))
    requests: queue.Queue[WorkerMessage] = queue.Queue()
    shell_ref: list[ZMQInteractiveShell] = []

    def parent_header() -> dict[str, Any]:
        if not shell_ref:
            return {}
        header: dict[str, Any] = extract_header(shell_ref[0].get_parent())
        return header

    executor_ref: list[Executor] = []
    inputs = InputBroker(
        post=lambda message: _post_after_barrier(io, outbox, message),
        send_urgent=lambda message: io.send_urgent(message),
        cell=lambda: executor_ref[0].cell if executor_ref else None,
    )
    io = IOThread(
        endpoint=options["endpoint"],
        key=bytes.fromhex(options["key"]),
        outbox=outbox,
        requests=requests,
        on_input_reply=inputs.resolve,
        fd_parent=parent_header,
        pipes=pipes,
    )
    io.start_and_wait()

    sys.stdout = WorkerStream("stdout", outbox, parent_header, 1)
    sys.stderr = WorkerStream("stderr", outbox, parent_header, 2)
    sys.stdin = PromptStdin(inputs)

    app = WorkerShellApp.instance()
    config = Config(options.get("config") or {})
    # The history session starts when the kernel adopts this worker.
    history_enabled = config.get("HistoryManager", {}).get("enabled", True)
    config.HistoryManager.enabled = False
    app.update_config(config)
    app.initialize(argv=[])
    app.init_path()
    app.init_shell()
    shell: ZMQInteractiveShell = app.shell
    shell_ref.append(shell)
    session = WorkerSession(outbox, io.barrier)
    bind_shell(shell, session, inputs)
    # ipykernel's `%matplotlib`/`%gui` support looks for the app's kernel.
    app.kernel = shell.kernel
    shell.register_magics(
        PyRepl3Magics(shell, lambda message: _post_after_barrier(io, outbox, message))
    )
    app.init_gui_pylab()
    app.init_extensions()
    app.init_code()

    def adopt(content: dict[str, Any]) -> None:
        shell.execution_count = int(content.get("execution_count", 1))
        manager = HistoryManager(shell=shell, parent=shell, enabled=history_enabled)
        shell.history_manager = manager
        shell.configurables.append(manager)

    executor = Executor(shell, io, outbox, inputs, requests, adopt)
    executor_ref.append(executor)
    warmup = options.get("warmup_code") or ""
    if warmup:
        shell.run_cell(warmup, store_history=False, silent=True)
    _apply_memory_limit(options.get("memory_limit"))
    executor.install_sigint()
    io.barrier()
    outbox.post(WorkerMessage(Kind.READY, {"pid": os.getpid()}))
    try:
        executor.serve()
    finally:
        shell.history_manager.end_session()
        io.barrier()


def _post_after_barrier(io: IOThread, outbox: Outbox, message: WorkerMessage) -> None:
    io.barrier()
    outbox.post(message)
