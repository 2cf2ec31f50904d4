"""One kernel under test: a KernelManager, a blocking client and a message pump.

Everything here belongs to the benchmark's main thread. The pump polls the
shell, IOPub and stdin sockets together with a pidfd of the kernel process, so
one wait learns of a reply, an output or the kernel's death, whichever comes
first. Each message is stamped with `time.monotonic()` once it has been read
and decoded: the moment a frontend could act on it.

The client never starts the heartbeat channel: its pings would wake the kernel
every few seconds and spoil the idle measurements.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, final

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from benchmarks.errors import KernelDiedError, ProbeCheckError, WaitTimeoutError

__all__ = ["ExecutionTrace", "KernelDriver", "Received", "kernel_environment"]

# ms; ZeroMQ retries a refused connect after this long. Its default (100 ms)
# would round every start-up time up to the next retry of the client.
RECONNECT_INTERVAL_MS = 10
# s; liveness re-check period, used only where os.pidfd_open is missing.
DEATH_CHECK_INTERVAL = 0.05
# messages taken from one socket per poll, so a flooding IOPub cannot starve
# the shell and stdin sockets.
READ_BATCH = 64
# s; a polite shutdown that takes longer than this ends with SIGKILL.
SHUTDOWN_WAIT = 5.0


@dataclass(frozen=True)
class Received:
    """One decoded message and the moment the benchmark had it in hand."""

    channel: str  # "shell", "iopub" or "stdin"
    msg_type: str
    parent_id: str  # msg_id of the request it belongs to; "" when none
    header: dict[str, Any]
    content: dict[str, Any]
    arrived: float  # time.monotonic() after decoding


@dataclass
class ExecutionTrace:
    """What one execute_request has produced so far; `KernelDriver.follow` fills it."""

    msg_id: str
    sent: float  # time.monotonic() just before the request left
    keep_text: bool  # keep stdout text, for completeness checks
    started_at: float | None = None  # execute_input seen on IOPub
    reply: Received | None = None
    idle_at: float | None = None  # status idle of this request seen on IOPub
    stream_msgs: int = 0
    stream_bytes: int = 0  # UTF-8 bytes of stdout and stderr text
    stdout_parts: list[str] = field(default_factory=list)  # empty unless keep_text
    input_requests: list[Received] = field(default_factory=list)

    @property
    def is_done(self) -> bool:
        return self.reply is not None and self.idle_at is not None

    @property
    def has_reply(self) -> bool:
        return self.reply is not None

    @property
    def has_started(self) -> bool:
        return self.started_at is not None

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_parts)

    def require_ok(self) -> None:
        """Raise `ProbeCheckError` unless the reply arrived with status "ok"."""
        if self.reply is None:
            raise ProbeCheckError(f"no execute_reply for {self.msg_id}")
        content = self.reply.content
        if content.get("status") != "ok":
            raise ProbeCheckError(
                f"cell failed: {content.get('ename')}: {content.get('evalue')}"
            )


def kernel_environment(workdir: Path) -> dict[str, str]:
    """Our environment, with the kernel's IPython and runtime state in `workdir`."""
    env = dict(os.environ)
    # pytest's marker turns off ipykernel's capture of fds 1/2 in the kernel.
    env.pop("PYTEST_CURRENT_TEST", None)
    env["IPYTHONDIR"] = str(workdir / "ipython")
    env["JUPYTER_RUNTIME_DIR"] = str(workdir / "runtime")
    return env


@final
class KernelDriver:
    """A kernel started from kernelspec `spec_name`; main thread only, not reentrant.

    Kernel stdout/stderr go to `<workdir>/<tag>.log`, never to the terminal.
    """

    def __init__(self, spec_name: str, workdir: Path, tag: str) -> None:
        self.spec_name = spec_name
        self._workdir = workdir
        self._tag = tag
        self._km: KernelManager | None = None
        self._client: BlockingKernelClient | None = None
        self._context: zmq.Context[Any] | None = None
        self._log: IO[bytes] | None = None
        self._pidfd: int | None = None  # readable once the kernel process exits
        self._poller = zmq.Poller()
        self._channels: dict[zmq.Socket[Any], str] = {}
        self._pending: deque[Received] = deque()  # read, not yet handed out

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        pid = self.pid if self._km is not None and self._km.has_kernel else None
        return (
            f"<KernelDriver {self.spec_name} tag={self._tag} {state} pid={pid}"
            f" pending={len(self._pending)}>"
        )

    @property
    def pid(self) -> int:
        process = getattr(self._manager().provisioner, "process", None)
        if process is None:
            raise KernelDiedError(f"{self.spec_name}: no kernel process", None)
        return int(process.pid)

    @property
    def log_path(self) -> Path:
        return self._workdir / f"{self._tag}.log"

    def is_alive(self) -> bool:
        return self._km is not None and self._km.is_alive()

    def start(self) -> float:
        """Launch the kernel and connect, without waiting for it to answer.

        Returns the `time.monotonic()` taken just before the launch.
        """
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._km = KernelManager(
            kernel_name=self.spec_name,
            connection_file=str(self._workdir / f"{self._tag}.json"),
            shutdown_wait_time=SHUTDOWN_WAIT,
        )
        launched = time.monotonic()
        self._km.start_kernel(
            env=kernel_environment(self._workdir),
            cwd=str(self._workdir),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._connect()
        self._watch_process()
        return launched

    def restart(self) -> float:
        """Kill the kernel and start another on the same ports; returns launch time."""
        km = self._manager()
        self._unwatch_process()
        self._pending.clear()
        launched = time.monotonic()
        km.restart_kernel(now=True)
        self._watch_process()
        return launched

    def shutdown(self, *, force: bool = False) -> None:
        """Stop the kernel (politely unless `force`), release everything; idempotent."""
        km, self._km = self._km, None
        try:
            if km is not None and km.has_kernel:
                km.shutdown_kernel(now=force)
        finally:
            self._unwatch_process()
            for socket in self._channels:
                self._poller.unregister(socket)
            self._channels.clear()
            if self._client is not None:
                self._client.stop_channels()
                self._client = None
            if self._context is not None:
                self._context.destroy(linger=0)
                self._context = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def interrupt(self) -> None:
        """Interrupt as a frontend does: signal or message, as the kernelspec says."""
        self._manager().interrupt_kernel()

    def request_kernel_info(self) -> str:
        return str(self._client_or_fail().kernel_info())

    def wait_reply(self, msg_id: str, deadline: float, what: str) -> Received:
        """The shell reply to `msg_id`; other messages are dropped on the way."""
        while True:
            msg = self.next_message(deadline)
            if msg is None:
                raise WaitTimeoutError(f"{what}: no reply before the deadline")
            if msg.channel == "shell" and msg.parent_id == msg_id:
                return msg

    def wait_ready(self, timeout: float) -> Received:
        """Send kernel_info_request and wait for its reply."""
        msg_id = self.request_kernel_info()
        return self.wait_reply(msg_id, time.monotonic() + timeout, "kernel_info")

    def send_execute(
        self, code: str, *, allow_stdin: bool = False, keep_text: bool = False
    ) -> ExecutionTrace:
        """Send an execute_request as a notebook would; `follow` collects the rest."""
        client = self._client_or_fail()
        content = {
            "code": code,
            "silent": False,
            # As a notebook does; history goes to the temporary IPYTHONDIR.
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        }
        msg = client.session.msg("execute_request", content)
        sent = time.monotonic()
        client.shell_channel.send(msg)
        return ExecutionTrace(msg["header"]["msg_id"], sent, keep_text)

    def send_input_reply(self, request: Received, value: str) -> None:
        client = self._client_or_fail()
        msg = client.session.msg("input_reply", {"value": value}, parent=request.header)
        client.stdin_channel.send(msg)

    def run(
        self, code: str, timeout: float, *, keep_text: bool = False
    ) -> ExecutionTrace:
        """Execute `code` and wait for its reply and its idle status; check "ok"."""
        trace = self.send_execute(code, keep_text=keep_text)
        first_line = code.splitlines()[0] if code else ""
        what = f"reply and idle of {first_line[:40]!r}"
        self.expect(trace, lambda t: t.is_done, trace.sent + timeout, what)
        trace.require_ok()
        return trace

    def follow(
        self,
        trace: ExecutionTrace,
        until: Callable[[ExecutionTrace], bool],
        deadline: float,
    ) -> bool:
        """Feed messages into `trace` until `until(trace)`; False at the deadline.

        Messages of other requests are left-overs of earlier probes and are dropped.

        Raises:
            KernelDiedError: the kernel exited before `until` held.
        """
        while not until(trace):
            msg = self.next_message(deadline)
            if msg is None:
                return False
            if msg.parent_id == trace.msg_id:
                _record(trace, msg)
        return True

    def expect(
        self,
        trace: ExecutionTrace,
        until: Callable[[ExecutionTrace], bool],
        deadline: float,
        what: str,
    ) -> None:
        """As `follow`, but a missed deadline raises `WaitTimeoutError` about `what`."""
        if not self.follow(trace, until, deadline):
            waited = time.monotonic() - trace.sent
            raise WaitTimeoutError(
                f"{what} not seen {waited:.1f} s after the request (started="
                f"{trace.has_started}, streams={trace.stream_msgs}, reply="
                f"{trace.has_reply}, idle={trace.idle_at is not None})"
            )

    def discard_pending(self) -> None:
        """Drop every message that has already arrived, without waiting."""
        self._pending.clear()
        while self.next_message(time.monotonic()) is not None:
            pass

    def next_message(self, deadline: float) -> Received | None:
        """The next message from any channel, or None once `deadline` has passed.

        Raises:
            KernelDiedError: the kernel process exited and nothing is left to read.
        """
        while not self._pending:
            remaining = max(0.0, deadline - time.monotonic())
            if self._pidfd is None:
                remaining = min(remaining, DEATH_CHECK_INTERVAL)
            exited = self._poll(remaining)
            if self._pending:
                break
            if exited or (self._pidfd is None and not self.is_alive()):
                raise KernelDiedError(self._death_message(), self._returncode())
            if time.monotonic() >= deadline:
                return None
        return self._pending.popleft()

    def _poll(self, timeout: float) -> bool:
        """Read what the sockets hold after one poll; True if the process exited."""
        exited = False
        for key, _event in self._poller.poll(math.ceil(timeout * 1000)):
            if isinstance(key, int):
                exited = True
            else:
                self._read_batch(key)
        return exited

    def _read_batch(self, socket: zmq.Socket[Any]) -> None:
        session = self._client_or_fail().session
        channel = self._channels[socket]
        for _ in range(READ_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            _identities, body = session.feed_identities(frames)
            msg = session.deserialize(body)
            parent = msg.get("parent_header") or {}
            self._pending.append(
                Received(
                    channel=channel,
                    msg_type=str(msg["header"]["msg_type"]),
                    parent_id=str(parent.get("msg_id", "")),
                    header=msg["header"],
                    content=msg["content"],
                    arrived=time.monotonic(),
                )
            )

    def _connect(self) -> None:
        self._context = zmq.Context()
        self._context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_INTERVAL_MS)
        client = self._manager().client(context=self._context)
        client.start_channels(
            shell=True, iopub=True, stdin=True, hb=False, control=False
        )
        self._client = client
        for name, channel in (
            ("shell", client.shell_channel),
            ("iopub", client.iopub_channel),
            ("stdin", client.stdin_channel),
        ):
            socket = channel.socket
            assert socket is not None, f"{name} channel has no socket after start"
            self._channels[socket] = name
            self._poller.register(socket, zmq.POLLIN)

    def _watch_process(self) -> None:
        if not hasattr(os, "pidfd_open"):
            return
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:
            # Already reaped, or pidfds unsupported: is_alive() checks take over.
            self._pidfd = None
            return
        self._poller.register(self._pidfd, zmq.POLLIN)

    def _unwatch_process(self) -> None:
        if self._pidfd is not None:
            self._poller.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _returncode(self) -> int | None:
        process = getattr(self._km.provisioner, "process", None) if self._km else None
        return None if process is None else process.poll()

    def _death_message(self) -> str:
        code = self._returncode()
        how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return f"{self.spec_name} kernel died ({how}); log: {self.log_path}"

    def _manager(self) -> KernelManager:
        if self._km is None:
            raise KernelDiedError(f"{self.spec_name}: kernel not started", None)
        return self._km

    def _client_or_fail(self) -> BlockingKernelClient:
        if self._client is None:
            raise KernelDiedError(f"{self.spec_name}: client not connected", None)
        return self._client


def _record(trace: ExecutionTrace, msg: Received) -> None:
    """Apply one message of `trace`'s request to it."""
    if msg.channel == "shell":
        if msg.msg_type == "execute_reply":
            trace.reply = msg
    elif msg.channel == "stdin":
        if msg.msg_type == "input_request":
            trace.input_requests.append(msg)
    elif msg.msg_type == "status":
        if msg.content.get("execution_state") == "idle":
            trace.idle_at = msg.arrived
    elif msg.msg_type == "execute_input":
        trace.started_at = msg.arrived
    elif msg.msg_type == "stream":
        text = str(msg.content.get("text", ""))
        trace.stream_msgs += 1
        trace.stream_bytes += len(text.encode("utf-8", "surrogatepass"))
        if trace.keep_text and msg.content.get("name") == "stdout":
            trace.stdout_parts.append(text)
