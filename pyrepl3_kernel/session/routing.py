"""Per-request queues: where the session's single reader puts each message.

Design note. The worker channel has exactly one reader task. Every control
message from the worker names the request it belongs to (`req`); the
router holds one asyncio queue per open request and drops what belongs to
none (a late reply of a request the kernel already answered, say). A
death of the worker is delivered to every open queue at once as a
`Failure`, so no request waits on a dead process until some timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from ..errors import PyRepl3Error
from ..protocol.messages import WorkerMessage

__all__ = ["Failure", "Router"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    """Delivered instead of a message when the request can never complete."""

    error: PyRepl3Error


Item = WorkerMessage | Failure


class Router:
    """Opens, routes to and closes per-request queues (main loop only)."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Item]] = {}
        self._ids = itertools.count(1)
        self._failure: Failure | None = None

    def __repr__(self) -> str:
        return f"<Router open={len(self._queues)} failed={self._failure is not None}>"

    def open(self) -> tuple[str, asyncio.Queue[Item]]:
        """A fresh request id and its queue; failed at once if the worker is gone."""
        req = f"r{next(self._ids)}"
        queue: asyncio.Queue[Item] = asyncio.Queue()
        if self._failure is not None:
            queue.put_nowait(self._failure)
        self._queues[req] = queue
        return req, queue

    def close(self, req: str) -> None:
        self._queues.pop(req, None)

    def route(self, message: WorkerMessage) -> bool:
        """Queue `message` for its request; False if no such request is open."""
        queue = self._queues.get(message.req)
        if queue is None:
            logger.debug(
                "dropped message of a closed request kind=%s req=%s",
                message.kind,
                message.req,
            )
            return False
        queue.put_nowait(message)
        return True

    def fail_all(self, error: PyRepl3Error) -> None:
        """Fail every open request now, and every request opened later."""
        self._failure = Failure(error)
        for queue in self._queues.values():
            queue.put_nowait(self._failure)
