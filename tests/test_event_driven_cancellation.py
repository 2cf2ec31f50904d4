"""Event-driven cancellation: `wait_message`, the `Session` waits built on it, `Router`.

Every test runs on its own event loop (`_run`) under one timeout. Progress is
measured in loop turns (`await asyncio.sleep(0)`), never in wall-clock time, so
a slow machine changes nothing but how long the suite takes. The Session tests
use a fake worker process and an inproc ZeroMQ pair: no process is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import zmq
import zmq.asyncio

from pyrepl3_kernel.errors import SessionClosedError, WorkerDiedError
from pyrepl3_kernel.protocol.channel import WorkerChannel
from pyrepl3_kernel.protocol.messages import Kind, WorkerMessage
from pyrepl3_kernel.session.launch import LaunchedWorker
from pyrepl3_kernel.session.routing import Failure, Router
from pyrepl3_kernel.session.session import Session, SessionState
from pyrepl3_kernel.session.waits import Cancelled, WaitMetrics, wait_message

TEST_TIMEOUT = 10.0  # s: a hung test fails here instead of at pytest-timeout's limit
CANCEL_TURNS = 10  # loop turns a cancel may take to end a wait (7 on CPython 3.11)
RACE_OFFSETS = range(10)  # turns between a message and a cancel, covering every step

CALLER_RACE_OFFSETS = RACE_OFFSETS

_endpoints = itertools.count(1)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await coro

    asyncio.run(bounded())


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _turns_until(predicate: Callable[[], bool], limit: int) -> int:
    """Loop turns until `predicate` holds; fails after `limit` turns."""
    for turn in range(limit + 1):
        if predicate():
            return turn
        await asyncio.sleep(0)
    raise AssertionError(f"still false after {limit} loop turns")


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def _drain_nowait(queue: asyncio.Queue[str]) -> list[str]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _waiting(
    queue: asyncio.Queue[str],
    cancel: asyncio.Event | None = None,
    deadline: float | None = None,
    metrics: WaitMetrics | None = None,
) -> asyncio.Task[str]:
    """Start a `wait_message` task and let it reach its wait."""
    task = asyncio.ensure_future(wait_message(queue, cancel, deadline, metrics))
    await _turns(3)
    assert not task.done()
    return task


# -- wait_message --------------------------------------------------------------


def test_wait_message_returns_queued_message_in_order() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        queue.put_nowait("first")
        queue.put_nowait("second")

        assert await wait_message(queue, asyncio.Event()) == "first"
        assert await wait_message(queue, asyncio.Event()) == "second"

    _run(main())


def test_wait_message_wakes_on_message_put_later() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = await _waiting(queue, asyncio.Event())

        queue.put_nowait("m")

        assert await asyncio.wait_for(task, TEST_TIMEOUT) == "m"
        assert queue.empty()
        assert not _other_tasks()

    _run(main())


def test_wait_message_cancel_ends_wait_within_a_few_turns() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        cancel = asyncio.Event()
        task = await _waiting(queue, cancel)
        await _turns(20)
        assert not task.done(), "the wait ended with neither message nor cancel"

        cancel.set()
        turns = await _turns_until(task.done, CANCEL_TURNS)

        assert turns <= CANCEL_TURNS
        with pytest.raises(Cancelled):
            task.result()
        assert cancel.is_set(), "the owner clears the event, not the wait"

    _run(main())


def test_wait_message_raises_at_once_when_cancel_already_set() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        queue.put_nowait("m")
        cancel = asyncio.Event()
        cancel.set()

        with pytest.raises(Cancelled):
            await wait_message(queue, cancel)

        assert _drain_nowait(queue) == ["m"]

    _run(main())


@pytest.mark.parametrize("cancel_first", [False, True], ids=["put-set", "set-put"])
def test_message_and_cancel_in_one_turn_keep_message_queued(cancel_first: bool) -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        cancel = asyncio.Event()
        task = await _waiting(queue, cancel)

        if cancel_first:
            cancel.set()
        queue.put_nowait("m1")
        queue.put_nowait("m2")
        if not cancel_first:
            cancel.set()

        with pytest.raises(Cancelled):
            await asyncio.wait_for(task, TEST_TIMEOUT)
        cancel.clear()
        assert await wait_message(queue, cancel) == "m1"
        assert await wait_message(queue, cancel) == "m2"
        assert not _other_tasks()

    _run(main())


@pytest.mark.parametrize("offset", RACE_OFFSETS)
def test_cancel_landing_any_turn_after_message_loses_nothing(offset: int) -> None:
    """Whichever step the wait is at when the cancel lands, the message survives."""

    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        cancel = asyncio.Event()
        task = await _waiting(queue, cancel)

        queue.put_nowait("m")
        await _turns(offset)
        cancel.set()

        try:
            got = [await asyncio.wait_for(task, TEST_TIMEOUT)]
        except Cancelled:
            got = []
        assert got + _drain_nowait(queue) == ["m"]
        assert not _other_tasks()

    _run(main())


def test_wait_message_deadline_in_past_raises_and_leaves_queue_intact() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        metrics = WaitMetrics()

        with pytest.raises(TimeoutError):
            await wait_message(queue, asyncio.Event(), loop.time() - 1.0, metrics)

        queue.put_nowait("m")
        assert await wait_message(queue, asyncio.Event()) == "m"
        assert metrics.cancel_event_triggers == 0
        assert not _other_tasks()

    _run(main())


def test_wait_message_near_deadline_raises_timeout_from_loop_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()

        with pytest.raises(TimeoutError):
            await wait_message(queue, asyncio.Event(), loop.time() + 0.01)

        assert queue.empty()
        queue.put_nowait("m")
        assert await wait_message(queue, asyncio.Event(), loop.time() + 0.01) == "m"
        assert not _other_tasks()

    _run(main())


def test_wait_message_deadline_in_past_still_returns_queued_message() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        queue.put_nowait("m")

        assert await wait_message(queue, None, loop.time() - 1.0) == "m"

    _run(main())


@pytest.mark.parametrize("offset", range(4))
def test_message_racing_deadline_is_returned_or_kept(offset: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.ensure_future(wait_message(queue, None, loop.time()))
        await _turns(1)  # the wait has started and armed its zero timeout

        await _turns(offset)
        queue.put_nowait("m")

        try:
            got = [await asyncio.wait_for(task, TEST_TIMEOUT)]
        except TimeoutError:
            got = []
        assert got + _drain_nowait(queue) == ["m"]
        assert not _other_tasks()

    _run(main())


@pytest.mark.parametrize("outcome", ["message", "cancel", "deadline"])
def test_wait_message_reaps_losing_tasks(outcome: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        cancel = asyncio.Event()
        deadline = loop.time() + 0.01 if outcome == "deadline" else None
        task = await _waiting(queue, cancel, deadline)
        inner = _other_tasks() - {task}
        assert len(inner) == 2, "one getter and one cancel watcher"

        if outcome == "message":
            queue.put_nowait("m")
        elif outcome == "cancel":
            cancel.set()
        await asyncio.wait({task}, timeout=TEST_TIMEOUT)

        assert task.done()
        assert all(t.done() for t in inner)
        assert not _other_tasks()

    _run(main())


def test_cancelling_caller_reaps_tasks_and_keeps_queue_intact() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = await _waiting(queue, asyncio.Event())

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TEST_TIMEOUT)

        assert not _other_tasks()
        queue.put_nowait("m")
        assert await wait_message(queue) == "m"

    _run(main())


@pytest.mark.parametrize("offset", CALLER_RACE_OFFSETS)
def test_cancelling_caller_any_turn_after_message_loses_nothing(offset: int) -> None:
    """A caller cancelled while its message arrives gets it, or leaves it queued."""

    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = await _waiting(queue, asyncio.Event())

        queue.put_nowait("m")
        await _turns(offset)
        task.cancel()

        try:
            got = [await asyncio.wait_for(task, TEST_TIMEOUT)]
        except asyncio.CancelledError:
            got = []
        assert got + _drain_nowait(queue) == ["m"]
        assert not _other_tasks()

    _run(main())


def test_wait_metrics_count_cancel_event_triggers_only() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        metrics = WaitMetrics()
        cancel = asyncio.Event()

        queue.put_nowait("m")
        await wait_message(queue, cancel, None, metrics)
        with pytest.raises(TimeoutError):
            await wait_message(queue, cancel, loop.time(), metrics)
        assert metrics.cancel_event_triggers == 0

        task = await _waiting(queue, cancel, None, metrics)
        cancel.set()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(task, TEST_TIMEOUT)
        with pytest.raises(Cancelled):
            await wait_message(queue, cancel, None, metrics)  # already set

        assert metrics == WaitMetrics(cancel_event_triggers=2)

    _run(main())


# -- the Session's waits on an in-memory channel -----------------------------------


class FakeProcess:
    """The part of `WorkerProcess` a Session uses; exit is an event the test sets."""

    pid = 999_999_999  # never a real process: this fake sends no signals

    def __init__(self, *, delivers_signals: bool) -> None:
        self.delivers_signals = delivers_signals
        self.returncode: int | None = None
        self.reaped = asyncio.Event()
        self.exited = asyncio.Event()
        self.signals: list[int] = []

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def signal_group(self, signum: int) -> bool:
        self.signals.append(signum)
        return self.delivers_signals

    def kill_group(self) -> None:
        self.die(-signal.SIGKILL)

    def die(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            self.reaped.set()
            self.exited.set()

    def is_oom_kill(self) -> bool:
        return False

    def crash_text(self) -> str:
        return ""

    def close_pipes(self) -> None:
        pass


class FakeWorker:
    """The worker's end of the channel, driven by the test."""

    def __init__(self, channel: WorkerChannel, process: FakeProcess) -> None:
        self.channel = channel
        self.process = process

    async def recv(self) -> WorkerMessage:
        return await asyncio.wait_for(self.channel.recv(), TEST_TIMEOUT)

    async def reply(self, request: WorkerMessage, content: dict[str, Any]) -> None:
        await self.channel.send(WorkerMessage(Kind.REPLY, content, req=request.req))


@contextlib.asynccontextmanager
async def _session(
    *, delivers_signals: bool = False, metrics: WaitMetrics | None = None
) -> AsyncIterator[tuple[Session, FakeWorker]]:
    """A READY Session over inproc sockets; killed and fully reaped on exit."""
    key = b"test-key"
    endpoint = f"inproc://session-{next(_endpoints)}"
    context = zmq.asyncio.Context()
    kernel_socket = context.socket(zmq.DEALER)
    kernel_socket.linger = 0
    kernel_socket.bind(endpoint)
    worker_socket = context.socket(zmq.DEALER)
    worker_socket.linger = 0
    worker_socket.connect(endpoint)
    process = FakeProcess(delivers_signals=delivers_signals)
    # A FakeProcess stands in for WorkerProcess: same attributes, no process.
    launched = LaunchedWorker(
        process,  # type: ignore[arg-type]
        kernel_socket,
        key,
        endpoint,
        None,
    )
    session = Session(launched, grace=0.0, metrics=metrics)
    worker = FakeWorker(WorkerChannel(worker_socket, key), process)
    try:
        await worker.channel.send(WorkerMessage(Kind.READY, {"pid": 1}))
        await asyncio.wait_for(session.wait_ready(), TEST_TIMEOUT)
        yield session, worker
    finally:
        session.kill()
        others = _other_tasks()
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 5.0)
        worker_socket.close(linger=0)
        context.destroy(linger=0)


async def _start_cell(
    session: Session, worker: FakeWorker
) -> tuple[asyncio.Task[Any], WorkerMessage]:
    parent = {"msg_id": "cell-1", "msg_type": "execute_request"}
    task = asyncio.ensure_future(session.execute({"code": "x"}, parent, 1))
    request = await worker.recv()
    assert request.kind is Kind.EXECUTE
    return task, request


def test_session_interrupt_wakes_execution_wait_through_cancel_event() -> None:
    """Nothing arrives from the worker: only the cancel event can end the wait."""

    async def main() -> None:
        metrics = WaitMetrics()
        async with _session(metrics=metrics) as (session, worker):
            cell, request = await _start_cell(session, worker)
            assert session.state is SessionState.BUSY

            assert session.interrupt() is True
            turns = await _turns_until(
                lambda: metrics.cancel_event_triggers == 1, CANCEL_TURNS
            )

            assert turns <= CANCEL_TURNS
            assert worker.process.signals == [signal.SIGINT]
            assert not cell.done(), "the worker's reply is still awaited"
            await worker.reply(request, {"status": "ok", "execution_count": 1})
            outcome = await asyncio.wait_for(cell, TEST_TIMEOUT)
            assert outcome.reply["status"] == "ok"
            assert outcome.made_here is False

    _run(main())


def test_session_unacknowledged_interrupt_ends_cell_and_reply_frees_worker() -> None:
    async def main() -> None:
        metrics = WaitMetrics()
        async with _session(delivers_signals=True, metrics=metrics) as (
            session,
            worker,
        ):
            cell, request = await _start_cell(session, worker)

            session.interrupt()
            outcome = await asyncio.wait_for(cell, TEST_TIMEOUT)

            assert outcome.made_here is True
            assert outcome.reply["ename"] == "KeyboardInterrupt"
            assert metrics.executions_cancelled == 1
            assert session.state is SessionState.BUSY, "the worker is still stopping"
            await worker.reply(request, {"status": "error", "execution_count": 1})
            second, request = await _start_cell(session, worker)
            await worker.reply(request, {"status": "ok", "execution_count": 2})
            assert (await asyncio.wait_for(second, TEST_TIMEOUT)).made_here is False

    _run(main())


def test_session_worker_death_fails_pending_request_at_once() -> None:
    async def main() -> None:
        async with _session() as (session, worker):
            pending = asyncio.ensure_future(session.request(Kind.COMPLETE, {}))
            request = await worker.recv()
            assert request.kind is Kind.COMPLETE

            worker.process.die(-signal.SIGSEGV)

            with pytest.raises(WorkerDiedError, match="killed by SIGSEGV"):
                await asyncio.wait_for(pending, TEST_TIMEOUT)
            assert session.state is SessionState.DEAD
            with pytest.raises(SessionClosedError, match="dead"):
                await session.execute({"code": ""}, {"msg_id": "late"}, 2)

    _run(main())


def test_session_request_ignores_replies_of_other_requests() -> None:
    async def main() -> None:
        async with _session() as (session, worker):
            first = asyncio.ensure_future(session.request(Kind.INSPECT, {}))
            first_request = await worker.recv()
            second = asyncio.ensure_future(session.request(Kind.COMPLETE, {}))
            second_request = await worker.recv()

            await worker.reply(second_request, {"for": "second"})
            await worker.reply(first_request, {"for": "first"})

            assert await asyncio.wait_for(first, TEST_TIMEOUT) == {"for": "first"}
            assert await asyncio.wait_for(second, TEST_TIMEOUT) == {"for": "second"}

    _run(main())


# -- Router ------------------------------------------------------------------------


def _reply(req: str, n: int = 0) -> WorkerMessage:
    return WorkerMessage(Kind.REPLY, {"n": n}, req=req)


def test_router_routes_by_request_id() -> None:
    async def main() -> None:
        router = Router()
        first, first_queue = router.open()
        second, second_queue = router.open()
        assert first != second

        assert router.route(_reply(second, 2)) is True
        assert router.route(_reply(first, 1)) is True

        assert first_queue.get_nowait() == _reply(first, 1)
        assert second_queue.get_nowait() == _reply(second, 2)
        assert first_queue.empty() and second_queue.empty()
        assert repr(router) == "<Router open=2 failed=False>"

    _run(main())


def test_router_drops_messages_of_closed_and_unknown_requests() -> None:
    async def main() -> None:
        router = Router()
        req, queue = router.open()
        router.close(req)
        router.close(req)  # closing twice is harmless

        assert router.route(_reply(req)) is False
        assert router.route(_reply("never-opened")) is False
        assert queue.empty()
        assert repr(router) == "<Router open=0 failed=False>"

    _run(main())


def test_router_fail_all_fails_open_and_later_requests() -> None:
    async def main() -> None:
        router = Router()
        error = WorkerDiedError(-9, "was killed by SIGKILL")
        _, first_queue = router.open()
        _, second_queue = router.open()

        router.fail_all(error)
        _, later_queue = router.open()

        for queue in (first_queue, second_queue, later_queue):
            item = await wait_message(queue, asyncio.Event())
            assert item == Failure(error)
            assert item.error is error
        assert repr(router) == "<Router open=3 failed=True>"

    _run(main())


def test_router_failure_reaches_a_request_already_waiting() -> None:
    async def main() -> None:
        router = Router()
        req, queue = router.open()
        waiter = asyncio.ensure_future(wait_message(queue, asyncio.Event()))
        await _turns(3)

        router.fail_all(WorkerDiedError(1, "exited with code 1"))

        item = await asyncio.wait_for(waiter, TEST_TIMEOUT)
        assert isinstance(item, Failure)
        assert router.route(_reply(req)) is True, "still open until its owner closes it"

    _run(main())
