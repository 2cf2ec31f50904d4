"""The worker's IPython shell, bound to the worker channel instead of sockets.

Libraries recognise a notebook by its shell: the class name
`ZMQInteractiveShell`, an `IPKernelApp` config section, `get_ipython().kernel`
with `get_parent()`, and `MPLBACKEND`. So the shell is ipykernel's own
`ZMQInteractiveShell`; its display publisher, displayhook and error path
call `session.send(...)`, and `WorkerSession` turns those calls into
messages on the `Outbox` rather than frames on a socket.
"""

from __future__ import annotations

import builtins
import getpass
import threading
from collections.abc import Callable
from typing import Any

import comm
from comm.base_comm import BaseComm, CommManager
from ipykernel.jsonutil import json_clean
from ipykernel.zmqshell import ZMQInteractiveShell
from jupyter_client.session import Session as JupyterSession
from jupyter_client.session import extract_header

from ..protocol.messages import OUTPUT_KINDS, Kind, WorkerMessage
from .inputs import InputBroker
from .outbox import Outbox

__all__ = ["KernelFacade", "WorkerComm", "WorkerSession", "bind_shell"]

_KINDS = {kind.value: kind for kind in OUTPUT_KINDS}


class WorkerSession(JupyterSession):
    """A jupyter_client Session whose `send` posts to the worker's outbox.

    Only message construction (`msg`) is inherited; nothing is signed here,
    the channel signs on the way out.
    """

    def __init__(
        self, outbox: Outbox, barrier: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(check_pid=False, username="pyrepl3", **kwargs)
        self._outbox = outbox
        self._barrier = barrier

    def send(
        self,
        stream: Any,
        msg_or_type: dict[str, Any] | str,
        content: dict[str, Any] | None = None,
        parent: dict[str, Any] | None = None,
        ident: Any = None,
        buffers: list[Any] | None = None,
        track: bool = False,
        header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        if isinstance(msg_or_type, dict):
            msg = msg_or_type
        else:
            msg = self.msg(msg_or_type, content, parent=parent, metadata=metadata)
        kind = _KINDS.get(msg["header"]["msg_type"])
        if kind is None:
            return None  # nothing else of the kernel's has a meaning here
        if kind is not Kind.STREAM:
            # Order C-level text before the display, as a terminal would.
            self._barrier()
        extra = {"jmeta": msg.get("metadata") or {}} if msg.get("metadata") else {}
        self._outbox.post(
            WorkerMessage(
                kind,
                msg["content"],
                parent=extract_header(msg.get("parent_header") or {}),
                buffers=tuple(
                    _as_bytes(b) for b in (buffers or msg.get("buffers") or ())
                ),
                extra=extra,
            ),
            wait=threading.current_thread() is threading.main_thread(),
        )
        return msg


def _as_bytes(buffer: Any) -> bytes:
    return buffer if isinstance(buffer, bytes) else bytes(memoryview(buffer))


class WorkerComm(BaseComm):
    """A comm whose messages leave through the worker channel."""

    shell: ZMQInteractiveShell | None = None

    def publish_msg(
        self,
        msg_type: str,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
        **keys: Any,
    ) -> None:
        shell = WorkerComm.shell
        if shell is None:
            return
        content = json_clean(dict(data=data or {}, comm_id=self.comm_id, **keys))
        shell.display_pub.session.send(
            None,
            msg_type,
            content,
            parent=shell.get_parent(),
            buffers=buffers,
            metadata=metadata,
        )


class KernelFacade:
    """What code in the worker finds at `get_ipython().kernel`.

    It carries the attributes libraries read from ipykernel's kernel object
    (`session`, `get_parent`, `comm_manager`, `raw_input`, `getpass`), backed
    by the worker's shell and input broker.
    """

    implementation = "pyrepl3"
    # GUI event-loop integration reads and sets this.
    # Known shortcoming (#6): no GUI event loop runs between cells in the
    # worker, so %gui qt/tk windows do not stay responsive; inline plots work.
    eventloop = None

    def __init__(self, shell: ZMQInteractiveShell, inputs: InputBroker) -> None:
        self.shell = shell
        self.session = shell.display_pub.session
        self.iopub_socket = None
        self.comm_manager = comm.get_comm_manager()
        self._inputs = inputs

    def get_parent(self, channel: str | None = None) -> dict[str, Any]:
        parent: dict[str, Any] = self.shell.get_parent()
        return parent

    @property
    def _parent_header(self) -> dict[str, Any]:
        return self.get_parent()

    def raw_input(self, prompt: str = "") -> str:
        return self._inputs.ask(str(prompt), password=False)

    def getpass(self, prompt: str = "Password: ", stream: Any = None) -> str:
        return self._inputs.ask(str(prompt), password=True)


def bind_shell(
    shell: ZMQInteractiveShell, session: WorkerSession, inputs: InputBroker
) -> None:
    """Point the shell's output paths, input and comms at the worker channel."""
    for publisher in (shell.displayhook, shell.display_pub):
        publisher.session = session
        publisher.pub_socket = None
        publisher.topic = b"execute_result" if publisher is shell.displayhook else b""
    facade = KernelFacade(shell, inputs)
    shell.kernel = facade

    manager = CommManager()
    comm.get_comm_manager = lambda: manager
    comm.create_comm = WorkerComm
    WorkerComm.shell = shell
    facade.comm_manager = manager

    def ask(prompt: object = "") -> str:
        return inputs.ask(str(prompt), password=False)

    def ask_secret(prompt: str = "Password: ", stream: Any = None) -> str:
        return inputs.ask(str(prompt), password=True)

    builtins.input = ask
    getpass.getpass = ask_secret
    shell.builtin_trap.add_builtin("input", ask)
    _propagate_parent_to_threads(shell)


def _propagate_parent_to_threads(shell: ZMQInteractiveShell) -> None:
    """Output of a thread belongs to the cell that started it, not the latest one."""
    start = threading.Thread.start
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def start_with_parent(self: threading.Thread) -> None:
        self._pyrepl3_parent = shell.get_parent()  # type: ignore[attr-defined]
        start(self)

    def bootstrap_with_parent(self: threading.Thread) -> None:
        parent = getattr(self, "_pyrepl3_parent", None)
        if parent:
            shell.set_thread_parent(parent)
        bootstrap(self)

    threading.Thread.start = start_with_parent  # type: ignore[method-assign]
    # A private hook, but the only place that runs in the new thread first.
    setattr(threading.Thread, "_bootstrap_inner", bootstrap_with_parent)
