"""Everything the worker sends, in the order user code produced it.

Design note. User code writes from any thread; the I/O thread owns the
socket. Stream text is coalesced while it waits: consecutive writes to one
stream under one parent become one chunk. Any other message first moves the
pending text out, so the wire sees text and displays in program order.

Backpressure is by credit: bytes sent but not yet published by the kernel
(`_in_flight`) plus bytes pending here may not exceed `window`. Writers from
user code wait for credit on a condition (interruptibly: a SIGINT raises
`KeyboardInterrupt` out of the wait); the I/O thread never waits, it stops
reading the fd pipes instead, so C code blocks on a full pipe. Control
messages need no credit.

In a child forked by user code (multiprocessing) there is no I/O thread:
writes go straight to file descriptors 1 and 2, which are the worker's
capture pipes, so the text still reaches the running cell.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.channel import encodable
from ..protocol.messages import Kind, WorkerMessage
from .gate import gate, new_signal, wait_for

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

STREAM_FDS = {"stdout": 1, "stderr": 2}


@dataclass(slots=True)
class _Chunk:
    name: str
    parent: dict[str, Any]
    parts: list[str] = field(default_factory=list)


class Outbox:
    """The worker's ordered, credit-limited outgoing queue.

    `write` and `post` may be called from any thread of the worker; `ship`
    is the I/O thread's callback that receives batches in order.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._lock = threading.Condition(threading.Lock())
        self._pending: list[_Chunk | WorkerMessage] = []
        self._pending_bytes = 0  # text bytes in `_pending` (chars, close enough)
        self._in_flight = 0  # bytes shipped, not yet credited back by the kernel
        self._ship: Callable[[list[WorkerMessage]], None] | None = None
        self._wake: Callable[[], None] | None = None
        self._wake_scheduled = False
        self._forked = False
        self._child_lines: dict[str, str] = {}  # partial lines of a forked child
        self._dirty = False  # text written since the last confirmed flush
        self._flush_ids = itertools.count(1)
        self._flushes: dict[int, threading.Lock] = {}
        os.register_at_fork(after_in_child=self._after_fork)

    def attach(
        self, ship: Callable[[list[WorkerMessage]], None], wake: Callable[[], None]
    ) -> None:
        """Connect to the I/O thread: `wake` schedules `drain` there, thread-safely."""
        self._ship = ship
        self._wake = wake

    def _after_fork(self) -> None:
        # The child has no I/O thread and may have forked while a writer held
        # the lock: start over with a fresh lock and write to the fds.
        self._lock = threading.Condition(threading.Lock())
        self._pending = []
        self._pending_bytes = 0
        self._forked = True
        self._child_lines = {"stdout": "", "stderr": ""}

    @property
    def is_forked(self) -> bool:
        return self._forked

    def write(
        self,
        name: str,
        text: str,
        parent: dict[str, Any],
        *,
        wait: bool,
        eager: bool = True,
    ) -> None:
        """Queue stream text; with `wait`, block (interruptibly) for credit first.

        Without `eager`, the I/O thread is woken only by a line end (or a later
        `flush`), so `print`'s separate writes of text and newline travel as one
        message, as a line-buffered terminal would show them.
        """
        if not text:
            return
        if self._forked:
            self._write_in_child(name, text)
            return
        size = len(text)
        with gate, self._lock:
            if wait:
                self._wait_for_credit(size)
            last = self._pending[-1] if self._pending else None
            if isinstance(last, _Chunk) and last.name == name and last.parent is parent:
                last.parts.append(text)
            else:
                self._pending.append(_Chunk(name, parent, [text]))
            self._pending_bytes += size
            self._dirty = True
            if eager or "\n" in text or "\r" in text:
                self._schedule_wake()

    def post(self, message: WorkerMessage, *, wait: bool = False) -> None:
        """Queue a non-stream message behind everything written before it."""
        if self._forked:
            return  # a forked child has no channel; its displays are lost
        with gate, self._lock:
            if wait:
                self._wait_for_credit(0)
            self._pending.append(message)
            self._schedule_wake()

    def _write_in_child(self, name: str, text: str, whole: bool = False) -> None:
        # Whole lines per write, so concurrent children do not tear lines.
        buffered = self._child_lines[name] + text
        cut = len(buffered) if whole else buffered.rfind("\n") + 1
        self._child_lines[name] = buffered[cut:]
        if cut:
            os.write(STREAM_FDS[name], encodable(buffered[:cut]).encode("utf-8"))

    def _wait_for_credit(self, size: int) -> None:
        # A write larger than the window proceeds once nothing else is out.
        while self._in_flight + self._pending_bytes > 0 and (
            self._in_flight + self._pending_bytes + size > self.window
        ):
            if self._pending:
                self._schedule_wake()  # what we wait behind must get moving
            with gate.opened():  # a writer waiting for credit is interruptible
                self._lock.wait()

    def flush(self) -> None:
        """Return once all text written so far has reached the kernel.

        An explicit flush is a promise that the text survives whatever comes
        next, even a SIGKILL of this process, so it waits (interruptibly) for
        the kernel's receipt; it costs nothing when no text was written since
        the last flush. Not for the I/O thread, which never waits.
        """
        if self._forked:
            for name in STREAM_FDS:
                self._write_in_child(name, "", whole=True)
            return
        if self._wake is None:
            return
        with gate, self._lock:
            if not self._dirty:
                return
            self._dirty = False
            flush_id = next(self._flush_ids)
            received = self._flushes[flush_id] = new_signal()
            self._pending.append(WorkerMessage(Kind.FLUSH, {"flush_id": flush_id}))
            self._schedule_wake()
        try:
            wait_for(received)
        finally:
            self._flushes.pop(flush_id, None)

    def flushed(self, flush_id: int) -> None:
        """The kernel received everything up to `flush_id` (I/O thread)."""
        received = self._flushes.pop(flush_id, None)
        if received is not None:
            received.release()

    def _schedule_wake(self) -> None:
        if not self._wake_scheduled and self._wake is not None:
            self._wake_scheduled = True
            self._wake()

    def has_credit(self) -> bool:
        """Whether the I/O thread may read more fd output now."""
        return self._in_flight + self._pending_bytes < self.window

    def grant(self, nbytes: int) -> None:
        """The kernel published `nbytes` of our output (I/O thread)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - nbytes)
            self._lock.notify_all()

    def drain(self) -> None:
        """Ship everything pending, in order (I/O thread only)."""
        with self._lock:
            self._wake_scheduled = False
            pending, self._pending = self._pending, []
            self._in_flight += self._pending_bytes
            self._pending_bytes = 0
        if not pending or self._ship is None:
            return
        batch: list[WorkerMessage] = []
        for item in pending:
            if isinstance(item, _Chunk):
                batch.append(
                    WorkerMessage(
                        Kind.STREAM,
                        {"name": item.name, "text": "".join(item.parts)},
                        parent=item.parent,
                    )
                )
            else:
                batch.append(item)
        self._ship(batch)
