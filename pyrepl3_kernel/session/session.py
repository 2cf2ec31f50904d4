"""A Session: one worker process, one reader, explicit states.

The session turns kernel requests into worker messages and back. Its single
reader task routes control messages to per-request queues (`Router`) and
output to the `sink` (the output stage, once the session is adopted). Each
execution has its own cancel event; `interrupt` signals the worker's
process group and sets it. The execution's follower task then decides,
with deadlines on the loop clock:

- the worker acknowledges within `ACK_WINDOW_S`: the frontend gets the
  cell's real reply, however long user code takes to clean up;
- no acknowledgement in time: the frontend gets a KeyboardInterrupt reply
  made here, while the worker is still stopping;
- not ended `grace` seconds after the first interrupt, and never
  acknowledged or interrupted again: the worker's group is killed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    ProtocolError,
    PyRepl3Error,
    SessionClosedError,
    WorkerDiedError,
    WorkerStartError,
)
from ..protocol.channel import WorkerChannel
from ..protocol.messages import OUTPUT_KINDS, Kind, WorkerMessage
from .launch import LaunchedWorker
from .process import describe_exit
from .routing import Failure, Router
from .waits import Cancelled, WaitMetrics, wait_message

__all__ = ["ExecuteOutcome", "Session", "SessionState"]

logger = logging.getLogger(__name__)

ACK_WINDOW_S = (
    0.040  # s: an interrupt not acknowledged by then is ended here (50 ms promise)
)
CRASH_DRAIN_S = 0.050  # s: how long a death waits for the crash stream's last lines
CLOSE_GRACE_S = 2.0  # s: a worker asked to shut down gets this long before SIGKILL


class SessionState(enum.Enum):
    STARTING = "starting"  # process spawned, no `ready` yet
    READY = "ready"  # idle, accepts an execution
    BUSY = "busy"  # an execution's user code may be running
    STOPPING = "stopping"  # shutting down, or being killed
    DEAD = "dead"  # the process is gone; every request fails


@dataclass(frozen=True, slots=True)
class ExecuteOutcome:
    """What the frontend gets for one execute request.

    `made_here` is True when the kernel ended the cell itself (interrupt not
    acknowledged, worker death): the kernel must publish `reply` as an
    `error` output too, since the worker never did.
    """

    reply: dict[str, Any]
    made_here: bool = False


@dataclass(slots=True)
class _Execution:
    req: str
    queue: asyncio.Queue[WorkerMessage | Failure]
    parent: dict[str, Any]
    execution_count: int
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Future[ExecuteOutcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    requested: int = 0  # interrupt requests received for this execution
    delivered: int = 0  # SIGINTs sent to the worker's group
    acks: int = 0  # acknowledgements from the worker
    first_interrupt: float | None = None
    last_interrupt: float | None = None
    ack_deadline: float | None = None
    timeout_at: float | None = None
    escalated: bool = False

    def answer(self, outcome: ExecuteOutcome) -> None:
        if not self.answered.done():
            self.answered.set_result(outcome)


class Session:
    """Owns one worker; see the module docstring. Main loop only."""

    def __init__(
        self,
        launched: LaunchedWorker,
        *,
        grace: float,
        metrics: WaitMetrics | None = None,
        on_input: Callable[[Session, _Execution, WorkerMessage], None] | None = None,
        on_input_cancel: Callable[[str], None] | None = None,
        on_cell_end: Callable[[str], None] | None = None,
        on_death: Callable[[Session], None] | None = None,
        on_kernel_action: Callable[[Session, WorkerMessage], None] | None = None,
    ) -> None:
        self.process = launched.process
        self.pid = launched.process.pid
        self._socket = launched.socket
        self._socket_path = launched.socket_path
        self._channel = WorkerChannel(self._socket, launched.key)
        self.grace = grace
        self.metrics = metrics
        self.state = SessionState.STARTING
        self.sink: Callable[[WorkerMessage], None] | None = None
        self._router = Router()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle = asyncio.Event()
        self._running: _Execution | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_input = on_input
        self._on_input_cancel = on_input_cancel
        self._on_cell_end = on_cell_end
        self._on_death = on_death
        self._on_kernel_action = on_kernel_action
        self.death: WorkerDiedError | None = None
        # what the user should be told at their next cell about this death
        self.notice = ""
        self.process.watch(asyncio.get_running_loop())
        self._spawn(self._read_loop())
        self._spawn(self._watch_exit())

    def __repr__(self) -> str:
        running = self._running.req if self._running else None
        return f"<Session pid={self.pid} state={self.state.value} running={running}>"

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ---------------------------------------------------------

    async def wait_ready(self) -> None:
        """Return once the worker said `ready`.

        Raises:
            WorkerStartError: the worker died first (with its crash text).
        """
        try:
            await self._ready
        except WorkerDiedError as exc:
            raise WorkerStartError(
                f"The worker process {exc.description} while starting."
                + (f"\n{exc.crash_text}" if exc.crash_text else "")
            ) from exc
        if self.state is SessionState.STARTING:
            self._set_state(SessionState.READY)

    def _set_state(self, state: SessionState) -> None:
        logger.debug(
            "session state pid=%s %s -> %s", self.pid, self.state.value, state.value
        )
        self.state = state
        if state in (SessionState.READY, SessionState.DEAD):
            self._idle.set()
        else:
            self._idle.clear()

    async def _watch_exit(self) -> None:
        process = self.process
        await process.reaped.wait()
        try:
            await asyncio.wait_for(process.exited.wait(), CRASH_DRAIN_S)
        except TimeoutError:
            process.close_pipes()
        description = describe_exit(process.returncode)
        if process.returncode == -signal.SIGKILL and process.is_oom_kill():
            description += " (out of memory: the cgroup's OOM killer ended it)"
        self.death = WorkerDiedError(
            process.returncode, description, process.crash_text()
        )
        was = self.state
        self.notice = self._death_notice(was, self.death)
        self._set_state(SessionState.DEAD)
        if not self._ready.done():
            self._ready.set_exception(self.death)
        self._router.fail_all(self.death)
        self._close_socket()
        if was is not SessionState.STOPPING:
            logger.warning("worker died pid=%s %s", self.pid, description)
        if self._on_death is not None:
            self._on_death(self)

    def _death_notice(self, was: SessionState, death: WorkerDiedError) -> str:
        running = self._running
        if was is SessionState.READY:
            return (
                f"[pyrepl3] The worker {death.description} while no cell was running;"
                " its variables were lost. This cell runs in a fresh worker.\n"
            )
        if running is not None and running.escalated:
            return (
                "[pyrepl3] The interrupted worker did not stop within"
                f" SessionPool.interrupt_grace={self.grace:g} s, so it was killed and"
                " replaced; its variables were lost.\n"
            )
        if running is not None and running.answered.done():
            return (
                f"[pyrepl3] The worker {death.description} after its cell was"
                " interrupted; its variables were lost.\n"
            )
        return ""

    def _close_socket(self) -> None:
        self._socket.close(linger=0)
        self._unlink_socket_path()

    def _unlink_socket_path(self) -> None:
        if self._socket_path is not None:
            try:
                os.unlink(self._socket_path)
            except FileNotFoundError:
                pass  # already removed once the worker connected

    def kill(self) -> None:
        """Kill the worker's process group now; death follows as an event."""
        if self.state is not SessionState.DEAD:
            self._set_state(SessionState.STOPPING)
            self.process.kill_group()

    async def close(self) -> None:
        """Ask the worker to exit; kill its group if it has not within a grace."""
        if self.state is SessionState.DEAD:
            return
        self._set_state(SessionState.STOPPING)
        try:
            await self._channel.send(WorkerMessage(Kind.SHUTDOWN, {}))
        except ProtocolError:
            pass  # the socket is already gone; the kill below still applies
        try:
            await asyncio.wait_for(self.process.reaped.wait(), CLOSE_GRACE_S)
        except TimeoutError:
            logger.warning(
                "worker ignored shutdown pid=%s; killing its group", self.pid
            )
        self.process.kill_group()
        await self.process.reaped.wait()

    # -- the reader --------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self._channel.recv()
            except ProtocolError as exc:
                if (
                    self.state in (SessionState.DEAD, SessionState.STOPPING)
                    or self._socket.closed
                ):
                    return
                logger.warning("dropped worker message pid=%s reason=%s", self.pid, exc)
                continue
            self._dispatch(message)

    def _dispatch(self, message: WorkerMessage) -> None:
        kind = message.kind
        if kind in OUTPUT_KINDS:
            if self.sink is not None:
                self.sink(message)
            else:
                logger.debug("dropped output of an unadopted worker kind=%s", kind)
                self.post_nowait(Kind.CREDIT, {"nbytes": _text_size(message)})
        elif kind is Kind.FLUSH:
            self.post_nowait(Kind.FLUSHED, message.content)
        elif kind is Kind.READY:
            if not self._ready.done():
                # The worker is connected: nobody else needs the path, so
                # remove it and no one else can ever connect.
                self._unlink_socket_path()
                self._ready.set_result(None)
        elif kind is Kind.KERNEL_ACTION:
            if self._on_kernel_action is not None:
                self._on_kernel_action(self, message)
        elif kind in (
            Kind.REPLY,
            Kind.INTERRUPT_ACK,
            Kind.INPUT_REQUEST,
            Kind.INPUT_CANCEL,
        ):
            self._router.route(message)
        else:
            logger.warning(
                "dropped unexpected worker message pid=%s kind=%s", self.pid, kind
            )

    # -- plain requests ----------------------------------------------------

    def post_nowait(self, kind: Kind, content: dict[str, Any], **fields: Any) -> None:
        """Send a message that needs no answer (comm messages, credit, input)."""
        if self.state is SessionState.DEAD:
            return
        self._spawn(self._send_quietly(WorkerMessage(kind, content, **fields)))

    async def _send_quietly(self, message: WorkerMessage) -> None:
        try:
            await self._channel.send(message)
        except ProtocolError as exc:
            logger.debug("could not send to worker pid=%s reason=%s", self.pid, exc)

    async def request(
        self,
        kind: Kind,
        content: dict[str, Any],
        parent: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send a request and return the worker's reply content.

        Raises:
            WorkerDiedError: the worker died first.
        """
        req, queue = self._router.open()
        try:
            await self._channel.send(
                WorkerMessage(kind, content, parent=parent or {}, req=req, **fields)
            )
            while True:
                item = await wait_message(queue)
                if isinstance(item, Failure):
                    raise item.error
                if item.kind is Kind.REPLY:
                    return item.content
        finally:
            self._router.close(req)

    # -- executions ----------------------------------------------------------

    async def execute(
        self,
        content: dict[str, Any],
        parent: dict[str, Any],
        execution_count: int,
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> ExecuteOutcome:
        """Run a cell; returns what the frontend should get (see `ExecuteOutcome`).

        The session stays BUSY after returning if the worker is still stopping
        an unacknowledged interrupt; the next `execute` waits for that.
        """
        await self._idle.wait()
        if self.state is not SessionState.READY:
            raise SessionClosedError(
                f"session of worker {self.pid} is {self.state.value}"
            )
        if on_start is not None:
            on_start()
        req, queue = self._router.open()
        execution = _Execution(req, queue, parent, execution_count)
        if timeout:
            execution.timeout_at = asyncio.get_running_loop().time() + timeout
        self._running = execution
        self._set_state(SessionState.BUSY)
        self._spawn(self._follow(execution, content))
        return await asyncio.shield(execution.answered)

    async def _follow(self, execution: _Execution, content: dict[str, Any]) -> None:
        message = WorkerMessage(
            Kind.EXECUTE, content, parent=execution.parent, req=execution.req
        )
        try:
            try:
                await self._channel.send(message)
            except (ProtocolError, asyncio.CancelledError):
                # The cell never left the kernel (the worker died as we sent):
                # the pool runs it on the next worker instead.
                if not execution.answered.done():
                    execution.answered.set_exception(
                        SessionClosedError(
                            f"worker {self.pid} died before the cell was sent"
                        )
                    )
                return
            await self._follow_until_done(execution)
        except Exception as exc:  # a bug here must still answer the frontend
            logger.exception("execution follower failed pid=%s", self.pid)
            execution.answer(
                ExecuteOutcome(_error_content(exc, execution), made_here=True)
            )
        finally:
            if not execution.answered.done():
                # Cancelled (the kernel is closing): the frontend still gets a reply.
                error = self.death or SessionClosedError("the kernel is shutting down")
                execution.answer(
                    ExecuteOutcome(_error_content(error, execution), made_here=True)
                )
            self._router.close(execution.req)
            self._running = None
            if self._on_cell_end is not None:
                self._on_cell_end(execution.req)
            if self.state is SessionState.BUSY:
                self._set_state(SessionState.READY)

    async def _follow_until_done(self, execution: _Execution) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                item = await wait_message(
                    execution.queue,
                    execution.cancel,
                    self._next_deadline(execution),
                    self.metrics,
                )
            except Cancelled:
                execution.cancel.clear()
                continue
            except TimeoutError:
                if self._on_deadline(execution, loop.time()):
                    return
                continue
            if isinstance(item, Failure):
                # Known shortcoming (#4): a worker killed while idle, in the
                # instant this cell was handed to it, reports WorkerDied for a
                # cell it never ran, instead of running it on the spare.
                self._answer_failure(execution, item.error)
                return
            if item.kind is Kind.REPLY:
                execution.answer(ExecuteOutcome(item.content))
                return
            if item.kind is Kind.INTERRUPT_ACK:
                execution.acks += 1
                execution.ack_deadline = None
            elif item.kind is Kind.INPUT_REQUEST and self._on_input is not None:
                self._on_input(self, execution, item)
            elif item.kind is Kind.INPUT_CANCEL and self._on_input_cancel is not None:
                self._on_input_cancel(str(item.extra.get("input_id", "")))

    def _next_deadline(self, execution: _Execution) -> float | None:
        deadlines = [
            execution.ack_deadline,
            execution.timeout_at,
            self._escalate_at(execution),
        ]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    def _escalate_at(self, execution: _Execution) -> float | None:
        if execution.first_interrupt is None or not self.grace or execution.escalated:
            return None
        if execution.acks and execution.requested < 2:
            return None  # one acknowledged interrupt never kills
        assert execution.last_interrupt is not None
        return max(
            execution.first_interrupt + self.grace,
            execution.last_interrupt + ACK_WINDOW_S,
        )

    def _on_deadline(self, execution: _Execution, now: float) -> bool:
        """Act on whichever deadline passed; True when the execution is over."""
        if execution.ack_deadline is not None and now >= execution.ack_deadline:
            execution.ack_deadline = None
            if execution.acks < execution.delivered:
                if self.metrics is not None:
                    self.metrics.executions_cancelled += 1
                execution.answer(
                    ExecuteOutcome(_interrupted_content(execution), made_here=True)
                )
        if execution.timeout_at is not None and now >= execution.timeout_at:
            execution.timeout_at = None
            logger.warning("cell timed out pid=%s req=%s", self.pid, execution.req)
            self.interrupt()
        escalate_at = self._escalate_at(execution)
        if escalate_at is not None and now >= escalate_at:
            execution.escalated = True
            if self.metrics is not None:
                self.metrics.escalations += 1
            logger.warning(
                "interrupt did not take; killing worker pid=%s grace=%s",
                self.pid,
                self.grace,
            )
            self.kill()
        return False

    def _answer_failure(self, execution: _Execution, error: PyRepl3Error) -> None:
        content = _error_content(error, execution)
        execution.answer(ExecuteOutcome(content, made_here=True))

    def interrupt(self) -> bool:
        """Interrupt the running execution (main loop); False when idle.

        A repeated interrupt is delivered again only once the previous one was
        acknowledged, and counts toward escalation either way.
        """
        execution = self._running
        if execution is None or self.state is not SessionState.BUSY:
            return False
        now = asyncio.get_running_loop().time()
        execution.requested += 1
        execution.last_interrupt = now
        if execution.first_interrupt is None:
            execution.first_interrupt = now
        if execution.delivered == execution.acks and self.process.signal_group(
            signal.SIGINT
        ):
            execution.delivered += 1
            if not execution.answered.done():
                execution.ack_deadline = now + ACK_WINDOW_S
        execution.cancel.set()
        return True


def _text_size(message: WorkerMessage) -> int:
    text = message.content.get("text") if message.kind is Kind.STREAM else None
    return len(text) if isinstance(text, str) else 0


def _interrupted_content(execution: _Execution) -> dict[str, Any]:
    return {
        "status": "error",
        "ename": "KeyboardInterrupt",
        "evalue": "interrupted; the worker is still stopping",
        "traceback": [
            "KeyboardInterrupt: the cell was interrupted; the worker is still stopping",
            "(it may be inside C code that does not check for signals). Its variables",
            "are kept if it stops by itself; if it is still busy after the grace",
            "period (SessionPool.interrupt_grace) or on a second interrupt, it is",
            "replaced.",
        ],
        "execution_count": execution.execution_count,
        "user_expressions": {},
        "payload": [],
    }


def _error_content(error: BaseException, execution: _Execution) -> dict[str, Any]:
    if isinstance(error, WorkerDiedError):
        if execution.escalated:
            ename = "KeyboardInterrupt"
            lines = [
                (
                    "KeyboardInterrupt: the worker did not stop after the interrupt,"
                    " so it was killed and replaced."
                ),
                (
                    "All variables were lost. The grace period before this happens is"
                    " set by SessionPool.interrupt_grace."
                ),
            ]
        else:
            ename = "WorkerDied"
            lines = [
                "WorkerDied: the worker process running this cell"
                f" {error.description}.",
                "All variables were lost; a fresh worker runs the next cell.",
            ]
            if error.crash_text:
                lines += [
                    "",
                    "Last output of the worker before it died:",
                    error.crash_text,
                ]
        evalue = lines[0].split(": ", 1)[1]
    else:
        ename = type(error).__name__
        evalue = str(error)
        lines = [f"{ename}: {evalue}"]
    return {
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": lines,
        "execution_count": execution.execution_count,
        "user_expressions": {},
        "payload": [],
    }
