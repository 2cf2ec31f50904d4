"""The main thread's requests; while it waits for one, the cells' asyncio loop runs.

Design note. In ipykernel an event loop runs between cells, so a task that a
cell started (`asyncio.ensure_future(...)`, `loop.create_task(...)`, the
async widget patterns of ipywidgets) goes on while the user reads and
clicks. The worker's main thread would instead sleep on a plain queue. So
`RequestInbox.get` runs IPython's asyncio loop, the one top-level `await`
uses and that this thread also gets as its current loop, until a request
arrives. With nothing scheduled the loop waits in epoll without a timeout:
an idle worker still never wakes. During a synchronous cell no loop runs,
as in a script, so `asyncio.run(...)` and `loop.run_until_complete(...)`
work there; `asyncio.create_task(...)` there hands the task to the cells'
loop (see `let_sync_cells_create_tasks`), where in a script it would fail.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import sys
import threading
import traceback
from typing import Any

from IPython.core.async_helpers import get_asyncio_loop

from ..protocol.messages import WorkerMessage

__all__ = ["RequestInbox", "let_sync_cells_create_tasks"]

logger = logging.getLogger(__name__)


def let_sync_cells_create_tasks() -> None:
    """Make `asyncio.create_task` with no running loop use the cells' loop.

    In ipykernel a loop is always running, so notebooks start background
    work with `asyncio.create_task(...)` in plain cells. Here none runs
    during a synchronous cell (which is what lets `asyncio.run` work), so
    without a running loop the task goes to the loop that runs between cells
    and under top-level `await`. With a running loop nothing changes.
    """
    original = asyncio.tasks.create_task

    def create_task(coro: Any, **options: Any) -> asyncio.Task[Any]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop: asyncio.AbstractEventLoop = get_asyncio_loop()
            return loop.create_task(coro, **options)
        return original(coro, **options)

    create_task.__doc__ = original.__doc__
    asyncio.create_task = asyncio.tasks.create_task = create_task


def _settle(arrival: asyncio.Future[None]) -> None:
    if not arrival.done():
        arrival.set_result(None)


class RequestInbox:
    """Requests from the I/O thread (`put`) to the main thread (`get`)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[WorkerMessage] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._arrival: asyncio.Future[None] | None = None  # what `get` runs for
        self._waiting: collections.deque[str] = collections.deque()  # their reqs

    def waiting_behind_tasks(self) -> str | None:
        """The oldest request kept waiting while background tasks run, if any."""
        with self._lock:
            if self._arrival is None or not self._waiting:
                return None
            return self._waiting[0]

    def put(self, message: WorkerMessage) -> None:
        """Hand over one request (any thread); wakes a running wait."""
        with self._lock:
            self._waiting.append(message.req)
        self._queue.put(message)
        with self._lock:
            arrival = self._arrival
        if arrival is not None:
            try:
                arrival.get_loop().call_soon_threadsafe(_settle, arrival)
            except RuntimeError:  # user code closed the loop: `get` sees the queue
                logger.debug("request arrived after the cell loop was closed")

    def get(self) -> WorkerMessage:
        """The next request (main thread), running the cells' loop meanwhile."""
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                pass
            else:
                with self._lock:
                    self._waiting.popleft()
                return message
            loop = get_asyncio_loop()
            if loop.is_running():  # called from inside a task: just block
                message = self._queue.get()
                with self._lock:
                    self._waiting.popleft()
                return message
            asyncio.set_event_loop(loop)  # what `asyncio.get_event_loop()` gives cells
            arrival = loop.create_future()
            with self._lock:
                self._arrival = arrival
            try:
                if self._queue.empty():  # else it slipped in before `_arrival` was set
                    loop.run_until_complete(arrival)
            except Exception:  # noqa: BLE001 - user code stopped the loop: wait again
                logger.debug("the cells' loop stopped before a request came")
            except BaseException as exc:  # noqa: BLE001 - a task's interrupt or exit
                # Shown under the last cell, as the task's own output would be,
                # from the task's frames on; the worker goes on serving.
                _report_task_escape(exc)
            finally:
                with self._lock:
                    self._arrival = None


_NOT_USER = (os.path.dirname(asyncio.__file__), os.path.dirname(__file__))


def _report_task_escape(exc: BaseException) -> None:
    """Print a background task's KeyboardInterrupt or SystemExit, its frames only."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_NOT_USER):
        tb = tb.tb_next
    print(f"A background task stopped with {type(exc).__name__}:", file=sys.stderr)
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
