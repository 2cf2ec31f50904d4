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
import logging
import queue
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

    def put(self, message: WorkerMessage) -> None:
        """Hand over one request (any thread); wakes a running wait."""
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
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            loop = get_asyncio_loop()
            if loop.is_running():  # called from inside a task: just block
                return self._queue.get()
            asyncio.set_event_loop(loop)  # what `asyncio.get_event_loop()` gives cells
            arrival = loop.create_future()
            with self._lock:
                self._arrival = arrival
            try:
                if self._queue.empty():  # else it slipped in before `_arrival` was set
                    loop.run_until_complete(arrival)
            except BaseException:  # noqa: BLE001 - a background task's, not ours
                # Shown under the last cell, as a task's own output would be;
                # the worker must go on serving.
                traceback.print_exc()
            finally:
                with self._lock:
                    self._arrival = None
