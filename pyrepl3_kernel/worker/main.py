"""Assembles a worker: capture, I/O thread, shell, executor; then serves."""

from __future__ import annotations

import faulthandler
import logging
import os
import resource
import sys
import threading
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
from .bootstrap import redirect_fds, sigint_blocked
from .executor import Executor
from .inbox import RequestInbox, let_sync_cells_create_tasks
from .inputs import InputBroker, PromptStdin
from .iothread import IOThread
from .magics import PyRepl3Magics
from .outbox import Outbox
from .shell import WorkerSession, bind_shell
from .streams import WorkerStream

__all__ = ["run"]

logger = logging.getLogger("pyrepl3_kernel.worker")

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class WorkerShellApp(BaseIPythonApplication, InteractiveShellApp):
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

    faulthandler.enable = enable_on_crash_fd


def _prewarm_tracebacks(shell: ZMQInteractiveShell) -> None:
    """Format one traceback, unseen, so a spare's first error is not slow.

    IPython imports its traceback machinery on first use (half a second);
    spares pay that while warming instead of in the user's next cell.
    """
    try:
        raise RuntimeError("prewarm")
    except RuntimeError:
        shell.InteractiveTB.structured_traceback(*sys.exc_info())


def run(options: dict[str, Any]) -> None:
    """Run a worker until the kernel says stop (or dies)."""
    crash_fd, pipes = redirect_fds()
    crash_stream = os.fdopen(crash_fd, "w", buffering=1, closefd=False)
    try:
        # Only our own loggers go to the kernel: the root logger stays
        # unconfigured, so user code's `logging.warning(...)` and
        # `logging.basicConfig(...)` reach the cell as in any Python.
        handler = logging.StreamHandler(crash_stream)
        handler.setFormatter(
            logging.Formatter(
                "[pyrepl3 worker %(process)d] %(levelname)s %(name)s: %(message)s"
            )
        )
        package_log = logging.getLogger("pyrepl3_kernel")
        package_log.addHandler(handler)
        package_log.setLevel(options.get("log_level", logging.WARNING))
        package_log.propagate = False
        _point_faulthandler(crash_fd)
        os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
        worker = Worker(options, pipes)
        worker.start()
        worker.serve()
    except BaseException:  # noqa: BLE001 - whatever it was, the kernel must learn it
        # The kernel shows the crash stream's tail to the user.
        traceback.print_exc(file=crash_stream)
        crash_stream.flush()
        os._exit(1)
    os._exit(0)


class Worker:
    """The parts of one worker process, wired together in the order they start.

    The main thread builds the shell and then serves requests; the I/O thread
    (started first) owns the socket and the capture pipes.
    """

    def __init__(self, options: dict[str, Any], pipes: dict[str, int]) -> None:
        self._options = options
        self.outbox = Outbox(window=int(options.get("credit_window", 1 << 20)))
        self.requests = RequestInbox()
        self.shell: ZMQInteractiveShell | None = None
        self.executor: Executor | None = None
        self._history_enabled = True
        self.inputs = InputBroker(
            post=self.post_ordered,
            send_urgent=lambda message: self.io.send_urgent(message),
            cell=lambda: self.executor.cell if self.executor else None,
        )
        self.io = IOThread(
            endpoint=options["endpoint"],
            key=bytes.fromhex(options["key"]),
            outbox=self.outbox,
            requests=self.requests,
            on_input_reply=self.inputs.resolve,
            fd_parent=self.parent_header,
            pipes=pipes,
        )

    def parent_header(self) -> dict[str, Any]:
        """Header of the request whose output this thread produces now."""
        if self.shell is None:
            return {}
        header: dict[str, Any] = extract_header(self.shell.get_parent())
        return header

    def post_ordered(self, message: WorkerMessage) -> None:
        """Post `message` behind all output written so far, fd text included."""
        self.io.barrier()
        self.outbox.post(message)

    def start(self) -> None:
        """Connect, capture output, build the shell, warm up, say ready."""
        with sigint_blocked():
            self.io.start_and_wait()
        catch_up = self.io.catch_up
        sys.stdout = WorkerStream(
            "stdout", self.outbox, self.parent_header, 1, catch_up
        )
        sys.stderr = WorkerStream(
            "stderr", self.outbox, self.parent_header, 2, catch_up
        )
        self.io.before_barrier += [sys.stdout.buffer.finish, sys.stderr.buffer.finish]
        sys.stdin = PromptStdin(self.inputs)
        let_sync_cells_create_tasks()
        with sigint_blocked():  # IPython starts its history thread here
            shell = self._build_shell()
        self.executor = Executor(
            shell, self.io, self.outbox, self.inputs, self.requests, self.adopt
        )
        warmup = self._options.get("warmup_code") or ""
        if warmup:
            shell.run_cell(warmup, store_history=False, silent=True)
        if self._options.get("prewarm"):
            _prewarm_tracebacks(shell)
        else:
            # The first worker is awaited by the user: warm up behind their back.
            with sigint_blocked():
                threading.Thread(
                    target=_prewarm_tracebacks,
                    args=(shell,),
                    name="pyrepl3-prewarm",
                    daemon=True,
                ).start()
        _apply_memory_limit(self._options.get("memory_limit"))
        self.executor.install_sigint()
        self.post_ordered(WorkerMessage(Kind.READY, {"pid": os.getpid()}))

    def _build_shell(self) -> ZMQInteractiveShell:
        app = WorkerShellApp.instance()
        config = Config(self._options.get("config") or {})
        # The history session starts when the kernel adopts this worker.
        self._history_enabled = config.get("HistoryManager", {}).get("enabled", True)
        config.HistoryManager.enabled = False
        app.update_config(config)
        app.initialize(argv=[])
        app.init_path()
        app.init_shell()
        shell: ZMQInteractiveShell = app.shell
        self.shell = shell
        bind_shell(shell, WorkerSession(self.outbox, self.io.barrier), self.inputs)
        # ipykernel's `%matplotlib`/`%gui` support looks for the app's kernel.
        app.kernel = shell.kernel
        shell.register_magics(PyRepl3Magics(shell, self.post_ordered))
        app.init_gui_pylab()
        app.init_extensions()
        app.init_code()
        return shell

    def adopt(self, content: dict[str, Any]) -> None:
        """Become the active worker: continue the kernel's count, start history."""
        shell = self.shell
        assert shell is not None
        shell.execution_count = int(content.get("execution_count", 1))
        with sigint_blocked():  # its saving thread must not take interrupts
            manager = HistoryManager(
                shell=shell, parent=shell, enabled=self._history_enabled
            )
        shell.history_manager = manager
        shell.configurables.append(manager)
        # In/Out and their aliases must name the new manager's lists, and stay
        # hidden from `%who` and friends as IPython's own are.
        names = {
            "In": manager.input_hist_parsed,
            "_ih": manager.input_hist_parsed,
            "Out": manager.output_hist,
            "_oh": manager.output_hist,
            "_dh": manager.dir_hist,
        }
        shell.user_ns.update(names)
        shell.user_ns_hidden.update(names)

    def serve(self) -> None:
        """Answer requests until the kernel asks us to stop."""
        assert self.executor is not None and self.shell is not None
        try:
            self.executor.serve()
        finally:
            self.shell.history_manager.end_session()
            self.io.barrier()
