"""The worker's main thread: runs each request the kernel sends, in order.

SIGINT is turned into `KeyboardInterrupt` only while the user code of an
execution runs; the handler tells the kernel at once (`interrupt_ack`) so
the kernel knows the interrupt took effect. Anywhere else a SIGINT is
dropped, so it can never break the worker's own replies.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import types
from collections.abc import Callable
from typing import Any

from ipykernel.jsonutil import json_clean
from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.core.completer import provisionalcompleter, rectify_completions
from IPython.utils.tokenutil import token_at_cursor

from ..protocol.messages import Kind, WorkerMessage
from .gate import gate
from .inbox import RequestInbox
from .inputs import InputBroker
from .iothread import IOThread
from .outbox import Outbox

__all__ = ["Executor"]

logger = logging.getLogger(__name__)

COMPLETION_TYPES_KEY = "_jupyter_types_experimental"  # metadata key frontends read
TRACEBACK_ENDS = 100  # frames shown at each end of a deeper traceback
WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

Handler = Callable[[WorkerMessage], dict[str, Any] | None]


class Executor:
    """Runs requests on the main thread; owns the SIGINT handler."""

    def __init__(
        self,
        shell: ZMQInteractiveShell,
        io: IOThread,
        outbox: Outbox,
        inputs: InputBroker,
        requests: RequestInbox,
        on_adopt: Callable[[dict[str, Any]], None],
    ) -> None:
        self.shell = shell
        self._io = io
        self._outbox = outbox
        self._inputs = inputs
        self._requests = requests
        self._on_adopt = on_adopt
        # request id of the execution whose user code runs now, else None
        self._user_code: str | None = None
        # (request id, parent message, allow_stdin) of the running cell
        self.cell: tuple[str, dict[str, Any], bool] | None = None
        self._handlers: dict[Kind, Handler] = {
            Kind.EXECUTE: self._execute,
            Kind.COMPLETE: self._complete,
            Kind.INSPECT: self._inspect,
            Kind.IS_COMPLETE: self._is_complete,
            Kind.HISTORY: self._history,
            Kind.COMM_INFO: self._comm_info,
            Kind.COMM_OPEN: self._comm,
            Kind.COMM_MSG: self._comm,
            Kind.COMM_CLOSE: self._comm,
            Kind.ADOPT: self._adopt,
        }

    def install_sigint(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)
        show = self.shell.showtraceback

        def showtraceback(exc_tuple: Any = None, *args: Any, **kwargs: Any) -> Any:
            etype, value, tb = exc_tuple or sys.exc_info()
            _cut_worker_frames(tb)
            if isinstance(value, BaseException):
                _shorten_deep_traceback(value)
            return show((etype, value, tb), *args, **kwargs)

        self.shell.showtraceback = showtraceback

    def _on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        # A request kept waiting by a background task that blocks the loop
        # is freed by interrupting that task, as a terminal would.
        req = self._user_code or self._requests.waiting_behind_tasks()
        if req is None:
            logger.debug("worker dropped a SIGINT outside user code")
            return
        self._io.send_urgent(WorkerMessage(Kind.INTERRUPT_ACK, {}, req=req))
        if gate.defer():
            return  # raised as soon as our own bookkeeping is done
        raise KeyboardInterrupt

    def serve(self) -> None:
        """Answer requests until the kernel asks us to stop."""
        while True:
            message = self._requests.get()
            if message.kind is Kind.SHUTDOWN:
                return
            handler = self._handlers.get(message.kind)
            if handler is None:
                logger.warning("worker ignored a request kind=%s", message.kind)
                continue
            try:
                reply = handler(message)
            except KeyboardInterrupt:
                reply = _error_reply(KeyboardInterrupt("interrupted"), [])
            except Exception as exc:
                logger.exception("worker request failed kind=%s", message.kind)
                reply = _error_reply(exc, [])
            if reply is not None:
                self._io.barrier()
                self._outbox.post(
                    WorkerMessage(Kind.REPLY, json_clean(reply), req=message.req)
                )

    # -- execute ----------------------------------------------------------

    def _execute(self, message: WorkerMessage) -> dict[str, Any]:
        shell = self.shell
        content = message.content
        parent = {
            "header": message.parent,
            "parent_header": {},
            "metadata": {},
            "content": {},
        }
        silent = bool(content.get("silent", False))
        shell.set_parent(parent)
        shell._last_traceback = None
        self.cell = (message.req, parent, bool(content.get("allow_stdin", False)))
        try:
            result = self._run_user_code(
                message.req,
                content.get("code", ""),
                store_history=bool(content.get("store_history", not silent)),
                silent=silent,
                cell_id=content.get("cell_id"),
            )
        finally:
            self.cell = None
            self._inputs.fail_all()
        reply = self._execute_reply(result, content.get("user_expressions") or {})
        return reply

    def _run_user_code(self, req: str, code: str, **options: Any) -> Any:
        if signal.getsignal(signal.SIGINT) != self._on_sigint:
            # An earlier cell replaced (or ignored) SIGINT; interrupts must
            # reach every new cell, as they do in a terminal's next command.
            signal.signal(signal.SIGINT, self._on_sigint)
        self._user_code = req
        try:
            return self.shell.run_cell(code, **options)
        except KeyboardInterrupt as exc:
            # The interrupt landed in IPython's own machinery, not in the cell.
            self.shell.showtraceback((type(exc), exc, exc.__traceback__))
            return None
        finally:
            self._user_code = None

    def _execute_reply(
        self, result: Any, user_expressions: dict[str, Any]
    ) -> dict[str, Any]:
        shell = self.shell
        reply: dict[str, Any]
        if (
            result is not None
            and result.success
            and not getattr(shell, "_last_traceback_during_displayhook", False)
        ):
            reply = {
                "status": "ok",
                "user_expressions": shell.user_expressions(user_expressions),
            }
        else:
            if result is None:
                error: BaseException = KeyboardInterrupt()
            else:
                error = result.error_before_exec or result.error_in_exec
            reply = _error_reply(error, shell._last_traceback or [])
            reply["user_expressions"] = {}
        reply["execution_count"] = shell.execution_count - 1
        reply["payload"] = shell.payload_manager.read_payload()
        shell.payload_manager.clear_payload()
        shell.exit_now = False
        return reply

    # -- introspection ----------------------------------------------------

    def _complete(self, message: WorkerMessage) -> dict[str, Any]:
        code = str(message.content.get("code", ""))
        cursor = message.content.get("cursor_pos")
        cursor = len(code) if cursor is None else int(cursor)
        with provisionalcompleter():
            found = list(
                rectify_completions(
                    code, self.shell.Completer.completions(code, cursor)
                )
            )
        kinds = [
            {
                "start": c.start,
                "end": c.end,
                "text": c.text,
                "type": c.type,
                "signature": c.signature,
            }
            for c in found
        ]
        start, end = (found[0].start, found[0].end) if found else (cursor, cursor)
        return {
            "status": "ok",
            "matches": [c.text for c in found],
            "cursor_start": start,
            "cursor_end": end,
            "metadata": {COMPLETION_TYPES_KEY: kinds},
        }

    def _inspect(self, message: WorkerMessage) -> dict[str, Any]:
        content = message.content
        name = token_at_cursor(
            str(content.get("code", "")), int(content.get("cursor_pos", 0))
        )
        try:
            bundle = self.shell.object_inspect_mime(
                name,
                detail_level=int(content.get("detail_level", 0)),
                omit_sections=tuple(content.get("omit_sections", ())),
            )
        except KeyError:
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        if not self.shell.enable_html_pager:
            bundle.pop("text/html", None)
        return {"status": "ok", "found": True, "data": bundle, "metadata": {}}

    def _is_complete(self, message: WorkerMessage) -> dict[str, Any]:
        manager = self.shell.input_transformer_manager
        status, indent = manager.check_complete(str(message.content.get("code", "")))
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    def _history(self, message: WorkerMessage) -> dict[str, Any]:
        c = message.content
        manager = self.shell.history_manager
        kind = c.get("hist_access_type")
        raw, output = bool(c.get("raw", True)), bool(c.get("output", False))
        if kind == "tail":
            entries = manager.get_tail(
                c.get("n") or 10, raw=raw, output=output, include_latest=True
            )
        elif kind == "range":
            session = int(c.get("session") or 0)
            entries = manager.get_range(
                session, c.get("start", 0), c.get("stop"), raw=raw, output=output
            )
            # IPython labels lines of the running session 0; name it as asked.
            current = manager.session_number
            if session in (0, current) or session + current == current:
                label = current if session > 0 else session
                entries = [(label, line, data) for _, line, data in entries]
        elif kind == "search":
            entries = manager.search(
                c.get("pattern") or "*",
                raw=raw,
                output=output,
                n=c.get("n"),
                unique=bool(c.get("unique", False)),
            )
        else:
            entries = []
        return {"status": "ok", "history": [list(entry) for entry in entries]}

    # -- comms ------------------------------------------------------------

    def _comm_info(self, message: WorkerMessage) -> dict[str, Any]:
        target = message.content.get("target_name")
        manager = self.shell.kernel.comm_manager
        comms = {
            comm_id: {"target_name": c.target_name}
            for comm_id, c in manager.comms.items()
            if target is None or c.target_name == target
        }
        return {"status": "ok", "comms": comms}

    def _comm(self, message: WorkerMessage) -> dict[str, Any]:
        msg = {
            "header": message.parent,
            "parent_header": {},
            "metadata": message.extra.get("jmeta", {}),
            "content": message.content,
            "buffers": list(message.buffers),
            "msg_id": message.parent.get("msg_id", ""),
            "msg_type": message.kind.value,
        }
        # Output of the handler (a widget callback) belongs to the comm message.
        self.shell.set_parent(msg)
        manager = self.shell.kernel.comm_manager
        handler = getattr(manager, message.kind.value)
        self._user_code = message.req or "comm"
        try:
            handler(None, None, msg)
        except KeyboardInterrupt:
            pass  # interrupting a widget callback only stops that callback
        finally:
            self._user_code = None
        # The reply follows the handler's output, so the kernel can report the
        # comm message idle only once that output is out.
        return {"status": "ok"}

    def _adopt(self, message: WorkerMessage) -> dict[str, Any]:
        self._on_adopt(message.content)
        return {"status": "ok", "execution_count": self.shell.execution_count}


def _cut_worker_frames(tb: types.TracebackType | None) -> None:
    """Drop the worker's own frames from the bottom of a user's traceback.

    An exception raised in the worker's machinery on user code's behalf
    (an interrupt landing in the SIGINT handler or inside `print`, a bad
    argument to `sys.stdout.write`) reads to the user like one from a
    builtin: their own frame last. A traceback of worker frames alone is
    left whole.
    """
    last_user = None
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(WORKER_DIR):
            last_user = tb
        tb = tb.tb_next
    if last_user is not None:
        last_user.tb_next = None


def _shorten_deep_traceback(error: BaseException) -> None:
    """Cut the middle out of very deep tracebacks, in place (chained ones too).

    IPython formats every frame, at about a millisecond each: the 3,000
    frames of a RecursionError take seconds, and a recursion limit raised to
    a million would keep the cell busy for many minutes before its error
    showed. The frames kept at both ends are the ones that say what happened.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
        entries: list[types.TracebackType] = []
        node = current.__traceback__
        while node is not None:
            entries.append(node)
            node = node.tb_next
        omitted = len(entries) - 2 * TRACEBACK_ENDS
        if omitted > 0:
            entries[TRACEBACK_ENDS - 1].tb_next = entries[-TRACEBACK_ENDS]
            current.add_note(
                f"({omitted} frames in the middle of this traceback are not shown)"
            )


def _error_reply(error: BaseException | None, traceback: list[str]) -> dict[str, Any]:
    return {
        "status": "error",
        "ename": type(error).__name__ if error is not None else "UnknownError",
        "evalue": str(error) if error is not None else "",
        "traceback": traceback,
    }
