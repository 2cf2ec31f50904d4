"""The SessionPool: the active session and its warm spares.

Design note. The pool keeps one active session and `spares` warm ones,
started with the same configuration. Decisions are made in memory first
(which session to promote, whether to start another), then the I/O
happens. Nothing refills the pool on a timer: taking a spare sets
`_want_spare`, which the warm-up task waits on. Spares start only after
the first worker is ready, so they never slow the kernel's start-up.

A worker that dies is replaced at once, whether it was running a cell or
idle; the user learns about an idle death at the next cell (`take_notice`).
Workers that keep dying while starting make the pool back off with one-shot
delays and give up after `start_attempts`; the next request tries again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from traitlets import Bool, Float, Integer, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..errors import SessionClosedError, WorkerDiedError, WorkerStartError
from ..protocol.messages import Kind, WorkerMessage
from . import prestart
from .endpoint import PrivateDir
from .launch import LaunchedWorker, launch
from .session import ExecuteOutcome, Session, SessionState
from .waits import WaitMetrics

__all__ = ["SessionPool"]

logger = logging.getLogger(__name__)

BACKOFF_S = 0.25  # s: first delay after a failed start; doubles per failure
CREDIT_WINDOW = 1 << 20  # chars of output a worker may have unpublished


class SessionPool(LoggingConfigurable):
    """Owns every worker of one kernel (main loop only)."""

    spares = Integer(
        1, help="Warm workers kept ready to replace the active one at once (0 allowed)."
    ).tag(config=True)
    warmup_code = Unicode(
        "",
        help="Code each worker runs silently, outside history, before it counts as"
        " warm (e.g. 'import numpy').",
    ).tag(config=True)
    interrupt_grace = Float(
        3.0,
        help="Seconds after the first interrupt of a cell before a worker that never"
        " acknowledged it (or was interrupted again) is killed and replaced."
        " 0 disables.",
    ).tag(config=True)
    cell_timeout = Float(
        0.0,
        help="Seconds a cell may run before it is interrupted as by the user"
        " (0: no limit).",
    ).tag(config=True)
    memory_limit = Integer(
        0,
        help="Address-space limit of each worker in bytes (RLIMIT_AS; 0: none)."
        " Allocations beyond it raise MemoryError. Some numeric libraries reserve"
        " large address ranges and fail under a low limit.",
    ).tag(config=True)
    start_attempts = Integer(
        3,
        help="Failed worker starts in a row before the pool gives up until the"
        " next request.",
    ).tag(config=True)
    metrics = Bool(
        False,
        help="Count cancel-event triggers, cancelled executions and escalations"
        " (shown by %%pyrepl3 stats).",
    ).tag(config=True)

    @validate("spares", "start_attempts")
    def _non_negative(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise ValueError(f"{proposal['trait'].name} must be >= 0, got {value}")
        return value

    def __init__(
        self,
        *,
        shell_config: dict[str, Any],
        next_count: Callable[[], int],
        sink_for: Callable[[Session], Callable[[WorkerMessage], None]],
        session_hooks: dict[str, Any],
        connection_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._shell_config = shell_config
        self._next_count = next_count
        self._sink_for = sink_for
        self._hooks = session_hooks
        self._connection_file = connection_file
        self.wait_metrics = WaitMetrics() if self.metrics else None
        self._private: PrivateDir | None = None
        self._active: Session | None = None
        self._activating: asyncio.Task[Session] | None = None
        self._spare_sessions: collections.deque[Session] = collections.deque()
        self._want_spare = asyncio.Event()
        self._first_ready = asyncio.Event()
        # set once the first worker is up, or could not be started
        self.first_attempt_done = asyncio.Event()
        self._notices: list[str] = []
        self._closing = False
        self._warm_task: asyncio.Task[None] | None = None
        self.replacements = 0
        # set by `%pyrepl3 restart`: the notice to show once the swap is done
        self.pending_restart = ""

    def __repr__(self) -> str:
        return (
            f"<SessionPool active={self._active!r} spares={len(self._spare_sessions)}"
            f" replacements={self.replacements}>"
        )

    # -- start and stop ----------------------------------------------------

    def start(self) -> None:
        """Begin bringing up the first worker (prestarted if there is one)."""
        early = prestart.take()
        launched: LaunchedWorker | None = None
        if early is not None:
            self._private, launched = early
        else:
            self._private = PrivateDir()
        self._activating = asyncio.ensure_future(self._activate(launched))
        self._activating.add_done_callback(lambda _: self.first_attempt_done.set())
        self._warm_task = asyncio.ensure_future(self._keep_warm())

    async def close(self) -> None:
        """Stop every worker and remove the private directory."""
        self._closing = True
        if self._warm_task is not None:
            self._warm_task.cancel()
        if self._activating is not None and not self._activating.done():
            self._activating.cancel()
        sessions = [s for s in [self._active, *self._spare_sessions] if s is not None]
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self._private is not None:
            self._private.remove()

    def kill_all_now(self) -> None:
        """Kill every worker group at once (used on SIGTERM of the kernel)."""
        for session in [self._active, *self._spare_sessions]:
            if session is not None:
                session.process.kill_group()
        if self._private is not None:
            self._private.remove()

    # -- the active session ------------------------------------------------

    async def active(self) -> Session:
        """The adopted, live session; starts or promotes one if needed.

        Raises:
            WorkerStartError: no worker could be started (the cause is in the text).
        """
        while True:
            session = self._active
            if session is not None and session.state in (
                SessionState.READY,
                SessionState.BUSY,
            ):
                return session
            if self._activating is None or self._activating.done():
                if self._activating is not None and self._activating.done():
                    # A previous attempt gave up; a new request tries again.
                    self._activating.exception()
                self._activating = asyncio.ensure_future(self._activate(None))
            try:
                await asyncio.shield(self._activating)
            except WorkerStartError:
                self._activating = None
                raise

    async def _activate(self, launched: LaunchedWorker | None) -> Session:
        while True:
            if self._spare_sessions and launched is None:
                session = self._spare_sessions.popleft()
            else:
                session = await self._start_session(launched)
                launched = None
            self._want_spare.set()
            try:
                await session.request(
                    Kind.ADOPT, {"execution_count": self._next_count()}
                )
            except WorkerDiedError:
                # It died between warm-up and adoption; the next one will do.
                logger.warning("worker died while being adopted pid=%s", session.pid)
                continue
            break
        session.sink = self._sink_for(session)
        self._active = session
        self._first_ready.set()
        logger.info("worker adopted pid=%s", session.pid)
        return session

    async def execute(
        self,
        content: dict[str, Any],
        parent: dict[str, Any],
        execution_count: int,
        on_start: Callable[[], None] | None = None,
    ) -> ExecuteOutcome:
        """Run a cell on the active session, moving on if that session dies first.

        `on_start` runs once the cell is about to reach a live worker (so a
        notice about an earlier death is shown in this cell).
        """
        while True:
            session = await self.active()
            try:
                return await session.execute(
                    content,
                    parent,
                    execution_count,
                    timeout=self.cell_timeout or None,
                    on_start=on_start,
                )
            except SessionClosedError:
                continue

    async def request(
        self, kind: Kind, content: dict[str, Any], parent: dict[str, Any], **fields: Any
    ) -> dict[str, Any]:
        """Send a request to the active worker and return its reply content."""
        session = await self.active()
        return await session.request(kind, content, parent, **fields)

    def post(self, kind: Kind, content: dict[str, Any], **fields: Any) -> None:
        """Send a message to the active worker without waiting (comm traffic)."""
        if self._active is not None:
            self._active.post_nowait(kind, content, **fields)

    def interrupt(self) -> bool:
        """Interrupt the running cell, if any (main loop)."""
        session = self._active
        return session.interrupt() if session is not None else False

    @property
    def active_session(self) -> Session | None:
        return self._active

    async def restart(self, reason: str) -> None:
        """Swap in a fresh worker on purpose; the old one exits cleanly."""
        self.pending_restart = ""
        old = self._active
        self._active = None
        if old is not None:
            self._notices.append(reason)
            asyncio.ensure_future(old.close())
        await self.active()

    def take_notice(self) -> str:
        """What the user should hear at the start of their next cell, once."""
        notices, self._notices = self._notices, []
        return "".join(notices)

    # -- workers -----------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {
            # Only the first worker is waited for; later ones warm up more.
            "prewarm": self._first_ready.is_set(),
            "config": self._shell_config,
            "warmup_code": self.warmup_code,
            "memory_limit": self.memory_limit or None,
            "credit_window": CREDIT_WINDOW,
            # Routine worker traffic is not worth the crash stream's space.
            "log_level": max(logging.WARNING, self.log.getEffectiveLevel()),
        }

    async def _start_session(self, launched: LaunchedWorker | None) -> Session:
        failures = 0
        while True:
            if self._closing:
                raise WorkerStartError("the kernel is shutting down")
            assert self._private is not None
            if launched is None:
                launched = launch(self._private, self._connection_file)
            launched.send_options(self._options())
            session = Session(
                launched,
                grace=self.interrupt_grace,
                metrics=self.wait_metrics,
                on_death=self._on_death,
                **self._hooks,
            )
            launched = None
            try:
                await session.wait_ready()
            except WorkerStartError as exc:
                failures += 1
                logger.warning(
                    "worker failed to start attempt=%s reason=%s", failures, exc
                )
                if failures >= self.start_attempts:
                    raise WorkerStartError(
                        f"Gave up starting a worker after {failures} attempts. {exc}"
                    ) from exc
                # One-shot back-off before the next attempt.
                await asyncio.sleep(BACKOFF_S * 2 ** (failures - 1))
                continue
            return session

    async def _keep_warm(self) -> None:
        await self._first_ready.wait()
        while not self._closing:
            await self._want_spare.wait()
            self._want_spare.clear()
            while len(self._spare_sessions) < self.spares and not self._closing:
                try:
                    session = await self._start_session(None)
                except WorkerStartError:
                    logger.exception("could not warm a spare worker")
                    break
                self._spare_sessions.append(session)

    def _on_death(self, session: Session) -> None:
        if session in self._spare_sessions:
            self._spare_sessions.remove(session)
            self._want_spare.set()
            return
        if session is not self._active or self._closing:
            return
        self._active = None
        self.replacements += 1
        if session.notice:
            self._notices.append(session.notice)
        if self._activating is None or self._activating.done():
            self._activating = asyncio.ensure_future(self._activate(None))
            self._activating.add_done_callback(_log_failure)

    def statistics(self) -> dict[str, int]:
        """Counters for `%pyrepl3 stats` (metrics only when enabled)."""
        stats = {
            "replacements": self.replacements,
            "spares_warm": len(self._spare_sessions),
        }
        if self.wait_metrics is not None:
            stats.update(
                cancel_event_triggers=self.wait_metrics.cancel_event_triggers,
                executions_cancelled=self.wait_metrics.executions_cancelled,
                escalations=self.wait_metrics.escalations,
            )
        return stats


def _log_failure(task: asyncio.Task[Session]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("could not replace a dead worker reason=%s", task.exception())
