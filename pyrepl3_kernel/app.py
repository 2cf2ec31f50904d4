"""The kernel application: ipykernel's app, tuned for a kernel that runs no user code.

Tunings that can live in the kernel class live there (stock ipykernel apps
launched by remote gateways get them too); the app only does what must
happen before the kernel exists: no capture of this process's own stdio
into IOPub, no polling parent watcher, and configuration read from
Jupyter's config path as well as the IPython profile.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from jupyter_core.paths import jupyter_config_path
from tornado import ioloop
from traitlets import DottedObjectName, Type, default
from traitlets.config.application import Application
from traitlets.config.loader import ConfigFileNotFound

from .kernel import PyRepl3Kernel

__all__ = ["PyRepl3KernelApp", "launch_new_instance"]

CONFIG_BASENAME = "pyrepl3_kernel_config"  # .py or .json, in any Jupyter config dir
CLOSE_DEADLINE_S = 5.0  # s: longest wait for ipykernel's socket and thread teardown


class PyRepl3KernelApp(IPKernelApp):
    """Launches `PyRepl3Kernel` (``python -m pyrepl3_kernel -f CONNECTION_FILE``)."""

    name = "pyrepl3-kernel"
    description = "The PyREPL3 Jupyter kernel: Python cells in a supervised worker."
    kernel_class = Type(
        PyRepl3Kernel, klass="ipykernel.kernelbase.Kernel", help="The kernel class."
    ).tag(config=True)
    outstream_class = DottedObjectName(
        None,
        allow_none=True,
        help="Unused: this process runs no user code, so its own stdio is not sent"
        " to IOPub; it goes to the server log.",
    ).tag(config=True)

    @default("capture_fd_output")
    def _no_fd_capture(self) -> bool:
        return False

    def init_poller(self) -> None:
        # ipykernel's parent poller wakes every second; we register a pidfd of
        # the parent on the loop in `start` instead (an event, not a check).
        self.poller = None

    def load_config_file(self, suppress_errors: Any = None) -> None:
        super().load_config_file(suppress_errors)
        try:
            Application.load_config_file(
                self, CONFIG_BASENAME, path=jupyter_config_path()
            )
        except ConfigFileNotFound:
            self.log.debug("no %s in the Jupyter config path", CONFIG_BASENAME)

    def init_kernel(self) -> None:
        super().init_kernel()
        # traitlets leaves the logger at DEBUG and filters in the handlers, so
        # every debug call on the message path built a record to throw away.
        handled = [h.level for h in self.log.handlers] or [logging.WARNING]
        level = max(logging.DEBUG, min(handled))
        if isinstance(self.log, logging.Logger):
            self.log.setLevel(level)
        package = logging.getLogger("pyrepl3_kernel")
        package.handlers = self.log.handlers
        package.setLevel(level)

    def start(self) -> None:
        parent = self.parent_handle
        if parent and parent != 1 and sys.platform.startswith("linux"):
            self._watch_parent(parent)
        super().start()

    def _watch_parent(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self.log.warning("parent process %s is already gone; exiting", pid)
            self._exit_with_parent()
            return
        loop = ioloop.IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        loop.add_reader(pidfd, self._exit_with_parent)

    def close(self) -> None:
        """Tear down ipykernel's sockets and threads, but never hang doing it.

        ipykernel stops its IOPub thread before its control thread; a control
        handler still publishing at that moment blocks forever and the
        process with it. The kernel's own work (workers, private directory)
        is already finished here, so a teardown that overruns is abandoned.
        """
        kernel = self.kernel
        if kernel is not None:
            kernel.pool.kill_all_now()
        closer = threading.Thread(
            target=super().close, name="pyrepl3-close", daemon=True
        )
        closer.start()
        closer.join(CLOSE_DEADLINE_S)
        if closer.is_alive():
            self.log.warning("ipykernel teardown did not finish; exiting anyway")
            os._exit(0)

    def _exit_with_parent(self) -> None:
        self.log.warning("parent process exited; stopping workers and exiting")
        kernel = self.kernel
        if kernel is not None:
            kernel.pool.kill_all_now()
        os._exit(1)


launch_new_instance = PyRepl3KernelApp.launch_instance
