"""`sys.stdout` and `sys.stderr` of the worker: text becomes `stream` messages."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from .outbox import Outbox

__all__ = ["WorkerStream"]


class WorkerStream(io.TextIOBase):
    """A text stream whose writes go to the `Outbox` under the current parent.

    Writes from any thread are allowed; a writer waits (interruptibly) while
    the worker is out of output credit. The parent comes from `parent_of`,
    which the shell keeps per thread with a fallback to the running cell.
    """

    def __init__(
        self,
        name: str,
        outbox: Outbox,
        parent_of: Callable[[], dict[str, Any]],
        fileno: int,
    ) -> None:
        super().__init__()
        self.name = name
        self._outbox = outbox
        self._parent_of = parent_of
        self._fileno = fileno

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # Libraries that write to the descriptor land in the capture pipe.
        return self._fileno

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._outbox.write(self.name, text, self._parent_of(), wait=True, eager=False)
        return len(text)

    def flush(self) -> None:
        # Ordering against displays and the end of the cell comes from the
        # outbox barrier; a flush only makes waiting text go out now.
        self._outbox.flush()
