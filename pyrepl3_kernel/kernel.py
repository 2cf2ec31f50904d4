"""PyRepl3Kernel: Jupyter requests in, Session calls out.

Thread ownership. The main thread runs the asyncio loop that owns the pool,
every session, the output stage and the stdin shadow socket. The control
thread (ipykernel's) only deserialises control requests: an interrupt is
handed to the main loop at once, without waiting behind the control lock,
and every other control request runs its work on the main loop too and
answers from the control thread.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import zmq
from ipykernel._version import kernel_protocol_version
from ipykernel.kernelbase import Kernel
from tornado import ioloop
from traitlets import Any as AnyTrait

from ._version import __version__
from .comms import CommRegistry
from .errors import PyRepl3Error, WorkerStartError
from .output.stage import OutputStage
from .protocol.messages import Kind, WorkerMessage
from .requests import REPLAYED, check_frames, replayed
from .session.config import worker_config
from .session.pool import SessionPool
from .session.session import ExecuteOutcome, Session
from .stdin import StdinRouter
from .usage import UsageReader

__all__ = ["PyRepl3Kernel"]

T = TypeVar("T")

_COMM_KINDS = {
    "comm_open": Kind.COMM_OPEN,
    "comm_msg": Kind.COMM_MSG,
    "comm_close": Kind.COMM_CLOSE,
}
# Control requests answered by an error: these features do not exist here.
_UNSUPPORTED = (
    "debug_request",
    "create_subshell_request",
    "delete_subshell_request",
    "list_subshell_request",
)


class PyRepl3Kernel(Kernel):
    """A Jupyter kernel whose cells run in a supervised worker process."""

    implementation = "pyrepl3"
    implementation_version = __version__
    banner = (
        f"PyREPL3 {__version__}: Python {sys.version.split()[0]} in a supervised worker"
        " process.\nInterrupts always answer; a crash costs the worker, not the kernel."
    )
    language_info = {
        "name": "python",
        "version": sys.version.split()[0],
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
        "file_extension": ".py",
    }
    help_links = [{"text": "Python", "url": "https://docs.python.org/3/"}]

    msg_types = [*Kernel.msg_types, *_COMM_KINDS]
    control_msg_types = [*Kernel.control_msg_types, *_COMM_KINDS]

    # Accepted from ipykernel's app, which passes them to every kernel class.
    user_ns = AnyTrait(None, allow_none=True)
    debugpy_stream = AnyTrait(None, allow_none=True)

    # Order comes from the output barrier, never from a sleep before replies.
    _execute_sleep = 0.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._next_count = 1  # In[n] of the next non-silent cell
        self._counting = False  # a cell that takes a number is running
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._started = asyncio.Event()  # the pool and output stage exist
        self._aborted_before_reply = False
        self._main_thread = threading.current_thread()
        self.comms = CommRegistry()
        self._usage = UsageReader()
        self.stdin: StdinRouter | None = None
        self.stage: OutputStage | None = None
        self.pool = SessionPool(
            parent=self,
            shell_config=worker_config(self.config),
            next_count=lambda: self._next_count + int(self._counting),
            sink_for=self._sink_for,
            session_hooks={
                "on_input": self._forward_input,
                "on_input_cancel": lambda input_id: self._stdin_router().cancel(
                    input_id
                ),
                "on_cell_end": lambda req: self._stdin_router().cell_ended(req),
                "on_kernel_action": self._on_kernel_action,
            },
            connection_file=_connection_file(self.parent),
        )

    # -- execution count mirrors the worker's In[n] -----------------------------

    @property
    def execution_count(self) -> int:
        return self._next_count

    @execution_count.setter
    def execution_count(self, value: int) -> None:
        # The base class increments this; the worker's shell owns the count.
        pass

    # -- start-up, signals --------------------------------------------------

    def start(self) -> None:
        # Known before the base starts the control thread, whose handlers
        # hand their work to this loop.
        loop = ioloop.IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        self._main_loop = loop
        super().start()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        self._quiet_iopub_thread()
        self.io_loop.add_callback(self._start_on_loop)

    def _quiet_iopub_thread(self) -> None:
        """Stop the IOPub thread's 10-second timer, our last idle wake-up.

        ipykernel's IOPub thread wakes every 10 s to close the event pipes of
        threads that ended. This process starts no short-lived threads that
        publish, so there is nothing to collect. The attributes are private:
        where an ipykernel lacks them, the timer keeps running.
        """
        thread = self.iopub_thread
        if thread is None or not hasattr(thread, "_event_pipe_gc_seconds"):
            return
        thread._event_pipe_gc_seconds = math.inf  # the sleep after this one

        def cancel_running_sleep() -> None:
            task = getattr(thread, "_event_pipe_gc_task", None)
            if task is not None:
                task.cancel()

        thread.io_loop.add_callback(cancel_running_sleep)

    async def _start_on_loop(self) -> None:
        self.stage = OutputStage(self._publish_output, parent=self)
        self.pool.start()
        self._started.set()
        self.stdin = StdinRouter(self.session, self.stdin_socket)
        asyncio.ensure_future(self.stdin.run())

    def pre_handler_hook(self) -> None:
        # The base makes SIGINT raise during handlers; here it is an interrupt.
        pass

    def post_handler_hook(self) -> None:
        pass

    def _on_sigint(self) -> None:
        self.log.info("SIGINT received; interrupting the running cell")
        self.pool.interrupt()

    def _on_sigterm(self) -> None:
        # Workers and the private directory go first; then die by SIGTERM as
        # asked, without the orderly close that could wait on a busy socket.
        self.log.warning("SIGTERM received; stopping workers and exiting")
        self.pool.kill_all_now()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    # -- kernel_info and unsupported requests ---------------------------------

    @property
    def kernel_info(self) -> dict[str, Any]:
        return {
            "protocol_version": kernel_protocol_version,
            "implementation": self.implementation,
            "implementation_version": self.implementation_version,
            "language_info": self.language_info,
            "banner": self.banner,
            "help_links": self.help_links,
            # No subshells and no debugger here (yet): say so explicitly.
            "supported_features": [],
        }

    async def kernel_info_request(
        self, stream: Any, ident: Any, parent: dict[str, Any]
    ) -> None:
        # Clients take this reply to mean "ready to run code" (that is what it
        # means for an in-process kernel), so the first one waits for the
        # first worker; every later one is answered at once.
        await self._on_main(self._first_worker())
        await super().kernel_info_request(stream, ident, parent)

    async def _first_worker(self) -> None:
        await self._started.wait()
        await self.pool.first_attempt_done.wait()

    async def _refuse(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        msg_type = parent["header"]["msg_type"]
        content = {
            "status": "error",
            "ename": "NotImplementedError",
            "evalue": f"{msg_type} is not supported by the pyrepl3 kernel",
            "traceback": [],
        }
        self.session.send(
            stream, msg_type.replace("_request", "_reply"), content, parent, ident
        )

    debug_request = _refuse
    create_subshell_request = _refuse
    delete_subshell_request = _refuse
    list_subshell_request = _refuse

    # -- shell channel: refuse what no handler can take ---------------------------

    async def shell_channel_thread_main(self, msg: list[Any]) -> None:
        """Check each shell message whole before ipykernel routes it (shell thread)."""
        if self.session is not None and not self._accept(msg, self.shell_stream):
            return
        await super().shell_channel_thread_main(msg)

    async def dispatch_shell(
        self, msg: list[Any], /, *args: Any, **kwargs: Any
    ) -> None:
        is_marker = len(msg) == 1  # ipykernel's internal "stop aborting" marker
        if is_marker or self.session is None:
            pass
        elif self.shell_channel_thread is None:  # an app that reads shell here
            if not self._accept(msg, self.shell_stream):
                return
        elif replayed(self.session, msg):
            # The shell thread checked the message whole; only a replay of
            # one still in flight during that check is detectable just here.
            self.log.warning("refused shell message reason=%s", REPLAYED)
            return
        await super().dispatch_shell(msg, *args, **kwargs)

    def _accept(self, frames: list[Any], stream: Any, channel: str = "shell") -> bool:
        problem = check_frames(self.session, frames)
        if problem is None:
            return True
        self.log.warning("refused %s message reason=%s", channel, problem.reason)
        header = problem.header
        if (
            stream is not None
            and header is not None
            and header["msg_type"].endswith("_request")
        ):
            # Well signed but malformed: the sender deserves an error reply.
            content = {
                "status": "error",
                "ename": "BadRequest",
                "evalue": problem.reason,
                "traceback": [],
            }
            self._publish_status("busy", channel, parent=header)
            self.session.send(
                stream,
                header["msg_type"].replace("_request", "_reply"),
                content,
                parent=header,
                ident=problem.idents,
            )
            self._publish_status("idle", channel, parent=header)
        return False

    # -- control channel -----------------------------------------------------

    async def dispatch_control(self, msg: list[Any]) -> None:
        """Deserialise once; interrupts skip the control lock, the rest queue on it."""
        if not self.session:
            return
        if not self._accept(msg, self.control_stream, "control"):
            return
        try:
            idents, frames = self.session.feed_identities(msg, copy=False)
            message = self.session.deserialize(frames, content=True, copy=False)
            msg_type = message["header"]["msg_type"]
        except Exception as exc:
            self.log.warning("refused control message reason=%s", _reason(exc))
            return
        if msg_type == "interrupt_request":
            await self._run_control(idents, message)
            return
        async with self._control_lock:
            await self._run_control(idents, message)

    async def _run_control(self, idents: Any, message: dict[str, Any]) -> None:
        self.set_parent(idents, message, channel="control")
        self._publish_status("busy", "control")
        msg_type = message["header"]["msg_type"]
        handler = self.control_handlers.get(msg_type)
        if msg_type == "execute_request":
            handler = self._refuse  # code never runs on the control thread
        if handler is None:
            self.log.warning("dropped control message of unknown type %r", msg_type)
        else:
            try:
                await handler(self.control_stream, idents, message)
            except Exception:
                self.log.exception("control handler failed type=%s", msg_type)
        try:
            self._publish_status_and_flush("idle", "control", self.control_stream)
        except zmq.ZMQError as exc:
            # After a shutdown_request the app may already have closed IOPub.
            self.log.debug("no idle status for %s reason=%s", msg_type, exc)

    async def _on_main(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on the main loop from whichever thread we are on."""
        loop = self._main_loop
        assert loop is not None
        if threading.current_thread() is self._main_thread:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def interrupt_request(
        self, stream: Any, ident: Any, parent: dict[str, Any]
    ) -> None:
        loop = self._main_loop
        if loop is not None:
            loop.call_soon_threadsafe(self.pool.interrupt)
        self.session.send(
            stream, "interrupt_reply", {"status": "ok"}, parent, ident=ident
        )

    # -- execute ---------------------------------------------------------------

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        return await self._on_main(
            self._execute(
                code, silent, store_history, user_expressions, allow_stdin, cell_id
            )
        )

    async def _execute(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict[str, Any] | None,
        allow_stdin: bool,
        cell_id: str | None,
    ) -> dict[str, Any]:
        parent = self.get_parent("shell")
        header = parent["header"]
        stage = self.stage
        assert stage is not None
        count = self._next_count
        stdin = self._stdin_router()
        stdin.idents[header["msg_id"]] = self._get_shell_context_var(
            self._shell_parent_ident
        )

        takes_number = not silent and store_history

        def on_start() -> None:
            # A worker adopted from here on (this one died) continues after
            # this cell's number; an earlier death is told in this cell.
            self._counting = takes_number
            notice = self.pool.take_notice()
            if notice:
                stage.write("stderr", notice, header)

        content = {
            "code": code if isinstance(code, str) else str(code),
            "silent": bool(silent),
            "store_history": bool(store_history),
            "user_expressions": user_expressions
            if isinstance(user_expressions, dict)
            else {},
            "allow_stdin": bool(allow_stdin),
            "cell_id": cell_id,
        }
        try:
            outcome = await self.pool.execute(content, header, count, on_start)
        except WorkerStartError as exc:
            outcome = ExecuteOutcome(_start_failure(exc, count), made_here=True)
        finally:
            stdin.idents.pop(header["msg_id"], None)
            self._counting = False
        reply = outcome.reply
        if outcome.made_here:
            # A worker killed under this cell tells why on stderr, here.
            notice = self.pool.take_notice()
            if notice:
                stage.write("stderr", notice, header)
            stage.hurry()
            stage.post(
                Kind.ERROR,
                {k: reply[k] for k in ("ename", "evalue", "traceback")},
                header,
            )
        await stage.drain(header)
        if (
            reply.get("status") == "error"
            and not silent
            and parent["content"].get("stop_on_error", True)
        ):
            self._abort_before_reply()
        worker_count = reply.get("execution_count")
        if outcome.made_here or not isinstance(worker_count, int):
            if takes_number:
                self._next_count = count + 1
        elif not silent:
            self._next_count = worker_count + 1
        restart = self.pool.pending_restart
        if restart:
            await self.pool.restart(restart)
        return reply

    def _abort_before_reply(self) -> None:
        """Start aborting queued cells now, before the error reply leaves.

        ipykernel starts aborting only after sending the reply, so a cell the
        client sends on seeing that reply can race the abort marker and be
        aborted too. Marking first means exactly the cells that were already
        queued are aborted.
        """
        super()._abort_queues(None)
        self._aborted_before_reply = True

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        if self._aborted_before_reply:
            self._aborted_before_reply = False  # done before the reply
            return
        super()._abort_queues(subshell_id)

    # -- requests answered by the worker's shell ----------------------------------

    async def _ask(
        self, kind: Kind, content: dict[str, Any], fallback: dict[str, Any]
    ) -> dict[str, Any]:
        parent = self.get_parent()
        try:
            return await self._on_main(
                self.pool.request(kind, content, parent.get("header", {}))
            )
        except PyRepl3Error as exc:
            self.log.warning("request failed kind=%s reason=%s", kind, exc)
            return dict(
                fallback,
                status="error",
                ename=type(exc).__name__,
                evalue=str(exc),
                traceback=[],
            )

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        cursor = len(code) if cursor_pos is None else cursor_pos
        return await self._ask(
            Kind.COMPLETE,
            {"code": code, "cursor_pos": cursor_pos},
            {
                "matches": [],
                "cursor_start": cursor,
                "cursor_end": cursor,
                "metadata": {},
            },
        )

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        return await self._ask(
            Kind.INSPECT,
            {
                "code": code,
                "cursor_pos": cursor_pos,
                "detail_level": detail_level,
                "omit_sections": list(omit_sections),
            },
            {"found": False, "data": {}, "metadata": {}},
        )

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        reply = await self._ask(Kind.IS_COMPLETE, {"code": code}, {})
        return reply if reply.get("status") != "error" else {"status": "unknown"}

    async def do_history(
        self,
        hist_access_type: str,
        output: bool = False,
        raw: bool = True,
        session: int = 0,
        start: int = 0,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
        **unknown: Any,  # the base passes the whole content; extra keys are ignored
    ) -> dict[str, Any]:
        content = {
            "hist_access_type": hist_access_type,
            "output": output,
            "raw": raw,
            "session": session,
            "start": start,
            "stop": stop,
            "n": n,
            "pattern": pattern,
            "unique": unique,
        }
        return await self._ask(Kind.HISTORY, content, {"history": []})

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        await self._on_main(self.pool.close())
        return {"status": "ok", "restart": restart}

    # -- comms ------------------------------------------------------------------

    async def _deliver_comm(self, parent: dict[str, Any]) -> None:
        msg_type = parent["header"]["msg_type"]
        content = parent["content"]
        self.comms.track(msg_type, content)
        metadata = (
            parent.get("metadata") if isinstance(parent.get("metadata"), dict) else {}
        )
        try:
            await self.pool.request(
                _COMM_KINDS[msg_type],
                content,
                parent["header"],
                buffers=tuple(bytes(b) for b in parent.get("buffers", [])),
                extra={"jmeta": metadata},
            )
        except PyRepl3Error as exc:
            self.log.warning(
                "comm message not delivered type=%s reason=%s", msg_type, exc
            )
        # Idle for this comm message only once the handler's output is out.
        assert self.stage is not None
        await self.stage.drain()

    async def comm_open(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        await self._on_main(self._deliver_comm(parent))

    comm_msg = comm_open
    comm_close = comm_open

    async def comm_info_request(
        self, stream: Any, ident: Any, parent: dict[str, Any]
    ) -> None:
        content = parent.get("content") or {}
        target = content.get("target_name") if isinstance(content, dict) else None
        comms = self.comms.info(target if isinstance(target, str) else None)
        self.session.send(
            stream, "comm_info_reply", {"status": "ok", "comms": comms}, parent, ident
        )

    # -- usage --------------------------------------------------------------------

    async def usage_request(
        self, stream: Any, ident: Any, parent: dict[str, Any]
    ) -> None:
        content = await self._on_main(_call(self._usage.read))
        self.session.send(stream, "usage_reply", content, parent, ident)

    # -- output -------------------------------------------------------------------

    def _sink_for(self, session: Session) -> Callable[[WorkerMessage], None]:
        stage = self.stage
        assert stage is not None
        self.comms.clear()  # comms of an earlier worker are gone with it

        def credit(nbytes: int) -> None:
            session.post_nowait(Kind.CREDIT, {"nbytes": nbytes})

        def sink(message: WorkerMessage) -> None:
            if message.kind in (Kind.COMM_OPEN, Kind.COMM_CLOSE):
                self.comms.track(message.kind.value, message.content)
            stage.accept(message, credit)

        return sink

    def _publish_output(
        self,
        kind: Kind,
        content: dict[str, Any],
        parent: dict[str, Any],
        buffers: tuple[bytes, ...],
        metadata: dict[str, Any],
    ) -> None:
        self.session.send(
            self.iopub_socket,
            kind.value,
            content,
            parent=parent,
            ident=self._topic(kind.value),
            buffers=list(buffers) or None,
            metadata=metadata or None,
        )

    # -- stdin ------------------------------------------------------------------

    def _stdin_router(self) -> StdinRouter:
        assert self.stdin is not None, "the kernel has not started"
        return self.stdin

    def _forward_input(
        self, session: Session, execution: Any, message: WorkerMessage
    ) -> None:
        asyncio.ensure_future(self._prompt_after_output(session, execution, message))

    async def _prompt_after_output(
        self, session: Session, execution: Any, message: WorkerMessage
    ) -> None:
        # What the cell printed before asking must be on screen before the
        # prompt: the output stage may still be holding it.
        assert self.stage is not None
        await self.stage.drain()
        await self._iopub_sent()
        self._stdin_router().forward(session, execution.req, execution.parent, message)

    async def _iopub_sent(self) -> None:
        """Return once everything published so far has left the IOPub socket.

        Publishing hands messages to ipykernel's IOPub thread; a marker
        scheduled behind them there tells us when they are on the wire.
        """
        thread = self.iopub_thread
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()

        def mark() -> None:
            loop.call_soon_threadsafe(_resolve, sent)

        thread.schedule(mark)
        await sent

    # -- magics that talk to the kernel ------------------------------------------------

    def _on_kernel_action(self, session: Session, message: WorkerMessage) -> None:
        action = message.content.get("action")
        stage = self.stage
        assert stage is not None
        if action == "restart":
            self.pool.pending_restart = (
                "[pyrepl3] Restarted on request (%pyrepl3 restart): this is a fresh"
                " worker"
                " with an empty namespace.\n"
            )
        elif action == "stats":
            lines = [f"{key}: {value}" for key, value in self.pool.statistics().items()]
            stage.write("stdout", "\n".join(lines) + "\n", message.parent)
        else:
            self.log.warning("dropped unknown kernel action %r", action)


async def _call(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _connection_file(app: Any) -> str | None:
    path = getattr(app, "abs_connection_file", None)
    return str(path) if path else None


def _start_failure(error: WorkerStartError, count: int) -> dict[str, Any]:
    lines = str(error).splitlines() or [str(error)]
    return {
        "status": "error",
        "ename": "WorkerStartError",
        "evalue": lines[0],
        "traceback": [
            "WorkerStartError: the kernel could not start a worker to run this cell.",
            *lines,
        ],
        "execution_count": count,
        "user_expressions": {},
        "payload": [],
    }
