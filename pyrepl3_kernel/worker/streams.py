"""`sys.stdout` and `sys.stderr` of the worker: text becomes `stream` messages."""

from __future__ import annotations

import codecs
import io
import threading
from collections.abc import Callable
from typing import Any

from .outbox import Outbox

__all__ = ["WorkerStream"]


class WorkerStream(io.TextIOBase):
    """A text stream whose writes go to the `Outbox` under the current parent.

    Writes from any thread are allowed; a writer waits (interruptibly) while
    the worker is out of output credit. The parent comes from `parent_of`,
    which the shell keeps per thread with a fallback to the running cell.
    `catch_up`, called before each new line, moves text already written to
    the file descriptors ahead of it.
    """

    def __init__(
        self,
        name: str,
        outbox: Outbox,
        parent_of: Callable[[], dict[str, Any]],
        fileno: int,
        catch_up: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self._outbox = outbox
        self._parent_of = parent_of
        self._fileno = fileno
        self._catch_up = catch_up
        self._line_start = True
        self.buffer = StreamBuffer(self)

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
        if text and self.buffer.holds_partial_character():
            self.buffer.finish()  # the cut character goes before this text
        return self.write_decoded(text)

    def write_decoded(self, text: str) -> int:
        """Write text that `buffer` decoded (it keeps its own partial bytes)."""
        if self._line_start and self._catch_up is not None and text:
            # Once per line, not per write: `print` writes each piece apart.
            self._catch_up()
        self._outbox.write(self.name, text, self._parent_of(), wait=True, eager=False)
        if text:
            self._line_start = text.endswith(("\n", "\r"))
        return len(text)

    def flush(self) -> None:
        # Ordering against displays and the end of the cell comes from the
        # outbox barrier; a flush only makes waiting text go out now.
        self._outbox.flush()


class StreamBuffer(io.BufferedIOBase):
    """`sys.stdout.buffer`: bytes join the text stream, decoded as UTF-8.

    Bytes that are not UTF-8 show as U+FFFD; a character split across writes
    is held until its last byte arrives, as a terminal would show it, but no
    longer than the next text on the stream or the next barrier.
    """

    def __init__(self, text: WorkerStream) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._text.fileno()

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes  # refuses str, as a binary stream must
        with self._lock:
            text = self._decoder.decode(bytes(data))
        self._text.write_decoded(text)
        return size

    def holds_partial_character(self) -> bool:
        return bool(self._decoder.getstate()[0])

    def finish(self) -> None:
        """Show a character still cut off as U+FFFD (at barriers, before text)."""
        with self._lock:
            rest = self._decoder.decode(b"", final=True)
        self._text.write_decoded(rest)

    def flush(self) -> None:
        self._text.flush()
