"""`input()`, `getpass()` and `sys.stdin` in the worker, answered by the frontend.

A prompt leaves as an `input_request` parented to the cell that asked; the
asking thread waits on an event that the I/O thread sets when the kernel
forwards the matching reply. The wait is interruptible: SIGINT raises
`KeyboardInterrupt` in it, and the kernel is told so a late reply is
dropped rather than answering the next prompt.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import StdinNotImplementedError

from ..protocol.messages import Kind, WorkerMessage
from .gate import gate, new_signal, wait_for

__all__ = ["InputBroker", "PromptStdin"]

EOT = "\x04"  # what a frontend sends for Ctrl-D: end of input


@dataclass(slots=True)
class _Wait:
    done: threading.Lock = field(default_factory=new_signal)  # released on answer
    value: str | None = None


class InputBroker:
    """Matches prompts to replies; see the module docstring.

    Args:
        post: queues a message behind the cell's output (after a barrier).
        send_urgent: sends a control message at once.
        cell: returns (request id, parent message, allow_stdin) of the running
            cell, or None while no cell runs.
    """

    def __init__(
        self,
        post: Callable[[WorkerMessage], None],
        send_urgent: Callable[[WorkerMessage], None],
        cell: Callable[[], tuple[str, dict[str, Any], bool] | None],
    ) -> None:
        self._post = post
        self._send_urgent = send_urgent
        self._cell = cell
        self._lock = threading.Lock()
        self._waits: dict[str, _Wait] = {}

    def ask(self, prompt: str = "", password: bool = False) -> str:
        """Prompt the frontend and return its answer (any thread)."""
        cell = self._cell()
        if cell is None:
            raise EOFError(
                "input() was called while no cell is running; nobody can answer"
            )
        req, parent, allow_stdin = cell
        if not allow_stdin:
            raise StdinNotImplementedError(
                "input() was called, but this frontend does not support input requests."
            )
        input_id = uuid.uuid4().hex
        wait = _Wait()
        with gate, self._lock:
            self._waits[input_id] = wait
        try:
            self._post(
                WorkerMessage(
                    Kind.INPUT_REQUEST,
                    {"prompt": str(prompt), "password": bool(password)},
                    parent=parent.get("header", {}),
                    req=req,
                    extra={"input_id": input_id},
                )
            )
            wait_for(wait.done)
        except KeyboardInterrupt:
            self._send_urgent(
                WorkerMessage(Kind.INPUT_CANCEL, {"input_id": input_id}, req=req)
            )
            raise KeyboardInterrupt("Interrupted by user") from None
        finally:
            with gate, self._lock:
                self._waits.pop(input_id, None)
        if wait.value is None or wait.value == EOT:
            raise EOFError("input was cancelled")
        return wait.value

    def resolve(self, input_id: str, value: str | None) -> None:
        """Hand a reply to its waiter (I/O thread); unknown ids are stale."""
        with gate, self._lock:
            wait = self._waits.pop(input_id, None)
        if wait is not None:
            wait.value = value
            wait.done.release()

    def fail_all(self) -> None:
        """End every open wait with `EOFError` (the cell that asked is over)."""
        with gate, self._lock:
            waits = list(self._waits.values())
            self._waits.clear()
        for wait in waits:
            wait.done.release()


class PromptStdin(io.TextIOBase):
    """`sys.stdin` whose reads prompt the frontend, one line per reply."""

    def __init__(self, broker: InputBroker) -> None:
        super().__init__()
        self._broker = broker

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        try:
            return self._broker.ask("") + "\n"
        except EOFError:
            return ""

    def read(self, size: int | None = -1) -> str:
        return self.readline()
