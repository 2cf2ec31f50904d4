"""The cancellable wait: a queue raced against a cancel event and a deadline.

Design note. Every wait of the kernel on its worker goes through
`wait_message`. It races three things with `asyncio.wait(FIRST_COMPLETED)`:
the request's queue, the cancel event of the execution it belongs to, and
an optional deadline on the loop's monotonic clock. Whatever wins, the
losing tasks are cancelled and awaited before returning, so no task leaks
and no message is consumed by a getter nobody reads: if a message and a
cancel arrive in the same turn, the message stays at the head of the queue
for the next wait (a finished getter's item is put back in front).

The cancel event belongs to one execution (it is created when that
execution starts), so an interrupt that arrives after the execution ended
sets an event no one waits on, and changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Cancelled", "WaitMetrics", "wait_message"]

T = TypeVar("T")


class Cancelled(Exception):
    """The cancel event was set before a message arrived."""


@dataclass(slots=True)
class WaitMetrics:
    """Counters kept when metrics are enabled (see `SessionPool.metrics`)."""

    cancel_event_triggers: int = 0  # waits woken by a cancel event
    executions_cancelled: int = 0  # executions that ended because of a cancel
    escalations: int = 0  # workers killed because an interrupt did not take


async def wait_message(
    queue: asyncio.Queue[T],
    cancel: asyncio.Event | None = None,
    deadline: float | None = None,
    metrics: WaitMetrics | None = None,
) -> T:
    """Return the next item of `queue`, unless cancelled or out of time first.

    `deadline` is an absolute time on the running loop's clock. Cancelling
    the calling task is safe: both inner tasks are cancelled and nothing is
    lost.

    Raises:
        Cancelled: `cancel` is set (it is not cleared here; the owner decides).
        TimeoutError: `deadline` passed; the queue is left as it was.
    """
    if cancel is not None and cancel.is_set():
        _count_cancel(metrics)
        raise Cancelled
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    waiters: set[asyncio.Future[Any]] = {getter}
    canceller = None
    if cancel is not None:
        canceller = asyncio.ensure_future(cancel.wait())
        waiters.add(canceller)
    done: set[asyncio.Future[Any]] = set()
    try:
        timeout = None
        if deadline is not None:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        # Decide before any further await: once cancelled, a getter that has
        # not finished can no longer take an item (asyncio.Queue.get leaves it
        # queued), so only an item already taken needs to go back.
        returning = getter in done and not (canceller is not None and canceller in done)
        for task in waiters:
            task.cancel()
        if not returning and _took_item(getter):
            _put_front(queue, getter.result())
        try:
            await asyncio.gather(*waiters, return_exceptions=True)
        except asyncio.CancelledError:
            if returning:  # our caller will never see the item: keep it queued
                _put_front(queue, getter.result())
            raise
    if canceller is not None and canceller in done:
        _count_cancel(metrics)
        raise Cancelled
    if returning:
        return getter.result()
    raise TimeoutError


def _took_item(getter: asyncio.Future[Any]) -> bool:
    return getter.done() and not getter.cancelled() and getter.exception() is None


def _put_front(queue: asyncio.Queue[T], item: T) -> None:
    queue.put_nowait(item)
    items = queue._queue  # type: ignore[attr-defined]
    items.rotate(1)


def _count_cancel(metrics: WaitMetrics | None) -> None:
    if metrics is not None:
        metrics.cancel_event_triggers += 1
