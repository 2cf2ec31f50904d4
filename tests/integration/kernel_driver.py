"""Drive a real kernel through jupyter_client and record everything it sends back.

A `KernelDriver` wraps a started `KernelManager` and its blocking client and is
the only reader of the client's shell, IOPub and stdin channels. Each message
read is filed under the request named by its parent header, so several requests
may be in flight at once (queued cells) and nothing read while waiting for one
request is lost for another. All waits are on the channels' sockets with a
deadline; the only timers are the interrupts a test schedules. The driver runs
on the test's thread and is not thread-safe.
"""

from __future__ import annotations

__all__ = [
    "Execution",
    "IOPubMessage",
    "KernelDriver",
    "KernelTimeoutError",
    "render_carriage_returns",
    "visible_outputs",
]

import math
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, final

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.channels import ZMQSocketChannel
from jupyter_client.manager import KernelManager

DEFAULT_TIMEOUT = 30.0  # seconds to wait for an execute_reply unless a test says
IDLE_GRACE = 5.0  # seconds after the reply within which status idle must arrive
PROBE_MARK = "__next_cell_ok__"  # printed by the cell that checks the kernel serves

# Messages that put something in a cell's output area.
OUTPUT_TYPES = frozenset(
    {"stream", "display_data", "execute_result", "error", "update_display_data"}
)

Content = dict[str, Any]


class KernelTimeoutError(AssertionError):
    """The kernel did not answer a request in time; the test has failed."""


@dataclass(frozen=True)
class IOPubMessage:
    """One IOPub message as read by the driver."""

    at: float  # time.monotonic() when the driver read it
    msg_type: str
    content: Content


@dataclass(eq=False)
class Execution:
    """One execute_request and what the kernel sent about it, filled by the driver.

    Times are `time.monotonic()` seconds, read when the driver took the message
    off its channel.
    """

    msg_id: str
    code: str
    sent_at: float
    answers: list[str]  # stdin answers not used yet, consumed in order
    interrupts_due: list[float]  # absolute times of interrupts not sent yet
    reply: Content | None = None  # content of the first execute_reply
    reply_at: float | None = None
    reply_count: int = 0
    idle_at: float | None = None  # first status idle with this parent
    iopub: list[IOPubMessage] = field(default_factory=list)
    input_requests: list[Content] = field(default_factory=list)
    interrupted_at: list[float] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        return None if self.reply is None else self.reply.get("status")

    @property
    def execution_count(self) -> int | None:
        count = None if self.reply is None else self.reply.get("execution_count")
        return count if isinstance(count, int) else None

    @property
    def errors(self) -> list[Content]:
        return [m.content for m in self.iopub if m.msg_type == "error"]

    @property
    def ename(self) -> str | None:
        """The reply's ename, else that of the last IOPub error."""
        if self.reply is not None and self.reply.get("ename") is not None:
            return str(self.reply["ename"])
        errors = self.errors
        return errors[-1].get("ename") if errors else None

    @property
    def has_traceback(self) -> bool:
        """The last IOPub error carries a non-empty traceback."""
        errors = self.errors
        return bool(errors and errors[-1].get("traceback"))

    @property
    def streams(self) -> list[Content]:
        return [m.content for m in self.iopub if m.msg_type == "stream"]

    @property
    def displays(self) -> list[Content]:
        """display_data and execute_result contents, in arrival order."""
        kinds = ("display_data", "execute_result")
        return [m.content for m in self.iopub if m.msg_type in kinds]

    @property
    def stdout(self) -> str:
        return self.stream_text("stdout")

    @property
    def stderr(self) -> str:
        return self.stream_text("stderr")

    def stream_text(self, name: str) -> str:
        """All text of stream `name`, concatenated as sent."""
        return "".join(s.get("text", "") for s in self.streams if s.get("name") == name)

    def rendered_text(self, name: str) -> str:
        """Stream `name` as a frontend shows it after clear_output and `\\r`."""
        shown = visible_outputs(self.iopub)
        text = "".join(
            m.content.get("text", "")
            for m in shown
            if m.msg_type == "stream" and m.content.get("name") == name
        )
        return render_carriage_returns(text)

    def stream_lines(self) -> list[tuple[str, str]]:
        """(stream name, line) for every line of every stream message, in order."""
        return [
            (str(s.get("name")), line)
            for s in self.streams
            for line in s.get("text", "").splitlines()
        ]

    def output_text(self) -> str:
        """Streams, tracebacks, error values and text/plain of displays, joined."""
        parts = [self.stdout, self.stderr]
        for m in self.iopub:
            if m.msg_type == "error":
                parts.extend(m.content.get("traceback", []))
                parts.append(str(m.content.get("evalue", "")))
            elif m.msg_type in OUTPUT_TYPES and m.msg_type != "stream":
                parts.append(str(m.content.get("data", {}).get("text/plain", "")))
        return "\n".join(parts)

    @property
    def iopub_types(self) -> list[str]:
        return [m.msg_type for m in self.iopub]

    @property
    def has_output(self) -> bool:
        return any(m.msg_type in OUTPUT_TYPES for m in self.iopub)

    @property
    def has_output_after_idle(self) -> bool:
        """An output message for this request was read after its status idle."""
        if self.idle_at is None:
            return False
        idle_at = self.idle_at
        return any(m.msg_type in OUTPUT_TYPES and m.at > idle_at for m in self.iopub)

    @property
    def reply_seconds(self) -> float:
        assert self.reply_at is not None, "no execute_reply was received"
        return self.reply_at - self.sent_at

    @property
    def idle_seconds(self) -> float:
        assert self.idle_at is not None, "no status idle was received"
        return self.idle_at - self.sent_at

    @property
    def first_interrupt_at(self) -> float | None:
        return self.interrupted_at[0] if self.interrupted_at else None

    @property
    def seconds_after_interrupt(self) -> float:
        """Seconds from the first interrupt sent for this request to its reply."""
        assert self.interrupted_at, "no interrupt was sent for this request"
        assert self.reply_at is not None, "no execute_reply was received"
        return self.reply_at - self.interrupted_at[0]

    @property
    def is_finished(self) -> bool:
        return self.reply is not None and self.idle_at is not None


def visible_outputs(messages: Iterable[IOPubMessage]) -> list[IOPubMessage]:
    """The output messages a cell still shows once every clear_output is applied.

    `clear_output` with `wait: true` empties the cell only when the next output
    arrives, which is what lets animations redraw without flicker.
    """
    shown: list[IOPubMessage] = []
    clear_on_next_output = False
    for message in messages:
        if message.msg_type == "clear_output":
            clear_on_next_output = bool(message.content.get("wait"))
            if not clear_on_next_output:
                shown.clear()
        elif (
            message.msg_type in OUTPUT_TYPES
            and message.msg_type != "update_display_data"
        ):
            if clear_on_next_output:
                shown.clear()
                clear_on_next_output = False
            shown.append(message)
    return shown


def render_carriage_returns(text: str) -> str:
    """Apply `\\r` as a terminal does: return to column 0 and overwrite."""
    rendered_lines = []
    for line in text.split("\n"):
        screen = ""
        for segment in line.split("\r"):
            screen = segment + screen[len(segment) :]
        rendered_lines.append(screen)
    return "\n".join(rendered_lines)


@final
class KernelDriver:
    """Send requests to one kernel and collect its answers, with deadlines.

    `submit` sends without waiting (queued cells); `wait` reads until the reply
    and status idle of one request arrived; `execute` does both.
    """

    def __init__(self, manager: KernelManager, client: BlockingKernelClient) -> None:
        self.manager = manager
        self.client = client
        # (parent msg_id or None, message) for every IOPub message, any parent.
        self.all_iopub: list[tuple[str | None, IOPubMessage]] = []
        self.undecodable: list[str] = []  # reprs of messages that failed to parse
        # (time read, whole message) for every stdin-channel message, any parent.
        self.all_stdin: list[tuple[float, Content]] = []
        self._executions: dict[str, Execution] = {}
        self._other_replies: dict[str, Content | None] = {}  # e.g. kernel_info
        self._poller = zmq.Poller()
        self._channels: dict[zmq.Socket[bytes], ZMQSocketChannel] = {}
        for channel in (
            client.shell_channel,
            client.iopub_channel,
            client.stdin_channel,
        ):
            self._poller.register(channel.socket, zmq.POLLIN)
            self._channels[channel.socket] = channel

    def __repr__(self) -> str:
        pending = sum(1 for e in self._executions.values() if not e.is_finished)
        return (
            f"<KernelDriver kernel={self.manager.kernel_name!r} "
            f"executions={len(self._executions)} pending={pending}>"
        )

    def submit(
        self,
        code: str,
        *,
        silent: bool = False,
        store_history: bool = True,
        allow_stdin: bool = True,
        stop_on_error: bool = True,
        user_expressions: dict[str, str] | None = None,
        stdin: Sequence[str] = (),
        interrupt_after: Sequence[float] = (),
    ) -> Execution:
        """Send an execute_request and return its record without waiting.

        `stdin` answers input_requests in order; once used up, further requests
        stay unanswered. `interrupt_after` lists seconds after sending at which
        `KernelManager.interrupt_kernel` is called (honouring `interrupt_mode`);
        they fire while the driver waits for anything.
        """
        msg_id = self.client.execute(
            code,
            silent=silent,
            store_history=store_history,
            user_expressions=user_expressions or {},
            allow_stdin=allow_stdin,
            stop_on_error=stop_on_error,
        )
        sent_at = time.monotonic()
        execution = Execution(
            msg_id=msg_id,
            code=code,
            sent_at=sent_at,
            answers=list(stdin),
            interrupts_due=sorted(sent_at + delay for delay in interrupt_after),
        )
        self._executions[msg_id] = execution
        return execution

    def wait(
        self,
        execution: Execution,
        timeout: float = DEFAULT_TIMEOUT,
        linger: float = 0.0,
    ) -> Execution:
        """Read until `execution` has its reply and status idle, then `linger` more.

        Raises:
            KernelTimeoutError: no reply within `timeout` seconds of sending, or no
                status idle within `IDLE_GRACE` seconds of the reply.
        """
        deadline = execution.sent_at + timeout
        if not self._pump_until(deadline, lambda: execution.reply is not None):
            sent = len(execution.interrupted_at)
            raise KernelTimeoutError(
                f"no execute_reply within {timeout:g}s ({sent} interrupt(s) sent) "
                f"for {execution.code[:60]!r}"
            )
        assert execution.reply_at is not None
        idle_deadline = execution.reply_at + IDLE_GRACE
        if not self._pump_until(idle_deadline, lambda: execution.idle_at is not None):
            raise KernelTimeoutError(
                f"no status idle within {IDLE_GRACE:g}s of the reply "
                f"for {execution.code[:60]!r}"
            )
        if linger > 0:
            self.settle(linger)
        return execution

    def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        allow_stdin: bool = True,
        stdin: Sequence[str] = (),
        interrupt_after: Sequence[float] = (),
        timeout: float = DEFAULT_TIMEOUT,
        linger: float = 0.0,
    ) -> Execution:
        """`submit` with the common options, then `wait`."""
        execution = self.submit(
            code,
            silent=silent,
            allow_stdin=allow_stdin,
            stdin=stdin,
            interrupt_after=interrupt_after,
        )
        return self.wait(execution, timeout=timeout, linger=linger)

    def interrupt(self) -> float:
        """Interrupt the kernel now, whatever runs; returns the monotonic time."""
        at = time.monotonic()
        self.manager.interrupt_kernel()
        return at

    def settle(self, seconds: float) -> None:
        """Keep reading and filing messages for `seconds`, as a scenario asks."""
        self._pump_until(time.monotonic() + seconds, lambda: False)

    def wait_until(self, is_done: Callable[[], bool], timeout: float) -> bool:
        """Keep reading and filing messages until `is_done()`; False after `timeout`."""
        return self._pump_until(time.monotonic() + timeout, is_done)

    def kernel_info(self, timeout: float = 10.0) -> Content | None:
        """Content of a kernel_info_reply, or None if none came within `timeout`."""
        msg_id = self.client.kernel_info()
        self._other_replies[msg_id] = None
        self._pump_until(
            time.monotonic() + timeout, lambda: self._other_replies[msg_id] is not None
        )
        return self._other_replies.pop(msg_id)

    def assert_alive(self, timeout: float = 10.0) -> None:
        """The kernel process runs and answers kernel_info within `timeout`."""
        assert self.manager.is_alive(), "the kernel process is not alive"
        reply = self.kernel_info(timeout)
        assert reply is not None, f"no kernel_info_reply within {timeout:g}s"

    def assert_next_cell_works(self, timeout: float = 20.0) -> None:
        """A plain print runs on this connection and its output arrives."""
        assert self.manager.is_alive(), "next cell impossible: the kernel is dead"
        probe = self.execute(
            f"print({PROBE_MARK!r})", allow_stdin=False, timeout=timeout
        )
        assert probe.status == "ok", f"next cell ended {probe.status!r}: {probe.reply}"
        assert PROBE_MARK in probe.stdout, f"next cell output missing: {probe.stdout!r}"

    @property
    def all_stdout(self) -> str:
        """Text of every stdout stream message read so far, whatever its parent."""
        return "".join(
            m.content.get("text", "")
            for _parent, m in self.all_iopub
            if m.msg_type == "stream" and m.content.get("name") == "stdout"
        )

    def final_display_texts(self, execution: Execution) -> list[str | None]:
        """text/plain of `execution`'s displays after every update read so far."""
        texts: list[str | None] = []
        positions: dict[str, list[int]] = {}
        for content in execution.displays:
            display_id = content.get("transient", {}).get("display_id")
            if display_id is not None:
                positions.setdefault(display_id, []).append(len(texts))
            texts.append(content.get("data", {}).get("text/plain"))
        for _parent, message in self.all_iopub:
            if message.msg_type != "update_display_data":
                continue
            display_id = message.content.get("transient", {}).get("display_id")
            for index in positions.get(display_id, []):
                texts[index] = message.content.get("data", {}).get("text/plain")
        return texts

    def _pump_until(self, deadline: float, is_done: Callable[[], bool]) -> bool:
        """Read and file messages until `is_done()` or `deadline`; True if done.

        Blocks on the three sockets at once, waking early only for a due
        interrupt, so it never spins.
        """
        while True:
            self._send_due_interrupts()
            if is_done():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            wake_at = min(deadline, self._next_interrupt_at())
            timeout_ms = max(0, math.ceil((wake_at - now) * 1000))
            for socket, _event in self._poller.poll(timeout_ms):
                self._read_one(socket)

    def _next_interrupt_at(self) -> float:
        due = [t for e in self._executions.values() for t in e.interrupts_due]
        return min(due, default=math.inf)

    def _send_due_interrupts(self) -> None:
        now = time.monotonic()
        for execution in self._executions.values():
            while execution.interrupts_due and execution.interrupts_due[0] <= now:
                execution.interrupts_due.pop(0)
                execution.interrupted_at.append(self.interrupt())

    def _read_one(self, socket: zmq.Socket[bytes]) -> None:
        channel = self._channels[socket]
        try:
            message = channel.get_msg(timeout=0)
        except queue.Empty:
            return
        except (ValueError, KeyError) as exc:
            # A kernel that sends what jupyter_client cannot parse is noted here;
            # the request it belonged to then fails on its missing reply.
            self.undecodable.append(repr(exc))
            return
        at = time.monotonic()
        if channel is self.client.iopub_channel:
            self._file_iopub(message, at)
        elif channel is self.client.shell_channel:
            self._file_reply(message, at)
        else:
            self.all_stdin.append((at, message))
            self._answer_stdin(message)

    def _file_iopub(self, message: Content, at: float) -> None:
        parent_id = message.get("parent_header", {}).get("msg_id")
        entry = IOPubMessage(at, message["header"]["msg_type"], message["content"])
        self.all_iopub.append((parent_id, entry))
        execution = self._executions.get(parent_id)
        if execution is None:
            return
        execution.iopub.append(entry)
        is_idle = entry.msg_type == "status" and (
            entry.content.get("execution_state") == "idle"
        )
        if is_idle and execution.idle_at is None:
            execution.idle_at = at

    def _file_reply(self, message: Content, at: float) -> None:
        parent_id = message.get("parent_header", {}).get("msg_id")
        if parent_id in self._other_replies:
            self._other_replies[parent_id] = message["content"]
            return
        execution = self._executions.get(parent_id)
        if execution is None:
            return  # e.g. a late kernel_info_reply from wait_for_ready
        execution.reply_count += 1
        if execution.reply is None:
            execution.reply = message["content"]
            execution.reply_at = at

    def _answer_stdin(self, message: Content) -> None:
        if message["header"]["msg_type"] != "input_request":
            return
        parent_id = message.get("parent_header", {}).get("msg_id")
        execution = self._executions.get(parent_id)
        if execution is None:
            # A request whose parent we do not know (say, from a thread) belongs
            # to the newest execution still waiting for its reply.
            waiting = [e for e in self._executions.values() if e.reply is None]
            if not waiting:
                return
            execution = waiting[-1]
        execution.input_requests.append(message["content"])
        if execution.answers:
            self.client.input(execution.answers.pop(0))
