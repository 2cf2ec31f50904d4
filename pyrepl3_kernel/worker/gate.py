"""Where a SIGINT may raise in the worker's main thread, and where it must wait.

`KeyboardInterrupt` can be raised between any two bytecodes, including right
after a `with lock:` took the lock and before the block's cleanup is in
place: the lock then stays held forever and the worker hangs. So the
worker's own bookkeeping runs inside `with gate:`: an interrupt
arriving there is acknowledged at once but raised only when the outermost
section ends. The blocking waits that must stay interruptible (for credit,
for input, for a flush receipt) are either opened explicitly with `opened()`
or are bare `Lock.acquire()` calls, which take no Python-level cleanup.

Only the main thread runs signal handlers, so only it is gated; calls from
other threads pass straight through.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["InterruptGate", "gate", "new_signal", "wait_for"]


class InterruptGate:
    """Defers KeyboardInterrupt out of the main thread's critical sections."""

    def __init__(self) -> None:
        self._main = threading.main_thread().ident
        self._depth = 0  # nesting of closed sections in the main thread
        self._pending = False  # an interrupt arrived inside a closed section

    def __repr__(self) -> str:
        return f"<InterruptGate depth={self._depth} pending={self._pending}>"

    def defer(self) -> bool:
        """Called by the SIGINT handler: True if the interrupt must wait."""
        if self._depth > 0:
            self._pending = True
            return True
        return False

    def __enter__(self) -> None:
        if threading.get_ident() == self._main:
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        if threading.get_ident() != self._main:
            return
        self._depth -= 1
        if self._depth == 0 and self._pending:
            self._pending = False
            raise KeyboardInterrupt

    @contextmanager
    def opened(self) -> Iterator[None]:
        """Let interrupts raise inside (a blocking wait in a closed section)."""
        if threading.get_ident() != self._main:
            yield
            return
        saved, self._depth = self._depth, 0
        if self._pending:
            self._pending = False
            self._depth = saved
            raise KeyboardInterrupt
        try:
            yield
        finally:
            self._depth = saved


def wait_for(signal_lock: threading.Lock) -> None:
    """Block until another thread releases `signal_lock` (interruptibly).

    A bare `Lock.acquire()` is a single C call: an interrupt either ends it
    with `KeyboardInterrupt` or does not, and leaves nothing half done.
    """
    signal_lock.acquire()


def new_signal() -> threading.Lock:
    """A one-shot signal: `wait_for` blocks until someone calls `release()`."""
    lock = threading.Lock()
    lock.acquire()
    return lock


gate = InterruptGate()
