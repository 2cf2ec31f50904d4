"""The worker's I/O thread: owns the socket and the capture pipes.

The thread runs its own asyncio loop. It sends what the `Outbox` ships, in
order; it reads the worker channel and hands requests to the main thread
through a `RequestInbox`; credits and input replies it handles itself,
so they arrive while user code runs. It also reads the pipes that replace
file descriptors 1 and 2, so C code and child processes land in the cell.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ..errors import ProtocolError
from ..protocol.channel import WorkerChannel
from ..protocol.messages import Kind, WorkerMessage
from .gate import new_signal, wait_for
from .inbox import RequestInbox
from .outbox import Outbox

__all__ = ["IOThread"]

logger = logging.getLogger(__name__)

PIPE_READ_SIZE = 65536  # bytes per read of a capture pipe; one pipe buffer's worth

_libc = ctypes.CDLL(None)
# poll(2) called without releasing the GIL: only ever with a zero timeout.
_poll_holding_gil = ctypes.PyDLL(None).poll
_poll_holding_gil.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int)
_poll_holding_gil.restype = ctypes.c_int


class _PollFd(ctypes.Structure):
    """`struct pollfd` from <poll.h>."""

    _fields_ = (
        ("fd", ctypes.c_int),
        ("events", ctypes.c_short),
        ("revents", ctypes.c_short),
    )


class IOThread(threading.Thread):
    """Owns the worker socket and the capture pipes; see the module docstring.

    Args:
        endpoint: the address the kernel bound for this worker.
        key: the worker's HMAC key.
        outbox: where user-code output waits for this thread.
        requests: the main thread's request queue.
        on_input_reply: called here with (input_id, value) for each input reply.
        fd_parent: returns the parent header for text read from the pipes.
        pipes: read ends of the capture pipes, by stream name.
    """

    def __init__(
        self,
        endpoint: str,
        key: bytes,
        outbox: Outbox,
        requests: RequestInbox,
        on_input_reply: Callable[[str, str | None], None],
        fd_parent: Callable[[], dict[str, Any]],
        pipes: dict[str, int],
    ) -> None:
        super().__init__(name="pyrepl3-io", daemon=True)
        self._endpoint = endpoint
        self._key = key
        self._outbox = outbox
        self._requests = requests
        self._on_input_reply = on_input_reply
        self._fd_parent = fd_parent
        self._pipes = pipes
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in pipes
        }
        self._paused: set[str] = set()
        # Called first at each barrier: Python-level buffers that hold text back.
        self.before_barrier: list[Callable[[], None]] = []
        # Held while pipe bytes are between the pipe and the outbox.
        self._reading = threading.Lock()
        self._split: set[str] = set()  # pipes whose decoder holds part of a character
        self._peek = (_PollFd * len(pipes))(
            *(_PollFd(fd, select.POLLIN, 0) for fd in pipes.values())
        )
        self._peek_at = ctypes.addressof(self._peek)
        self._forked = False  # a forked child has our object but no thread
        os.register_at_fork(after_in_child=self._after_fork)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sendq: asyncio.Queue[WorkerMessage] | None = None

    def start_and_wait(self) -> None:
        """Start the thread and return once it can accept messages."""
        self.start()
        self._started.wait()

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.PAIR)
        socket.linger = 2000  # ms: let the last replies out when we exit
        socket.sndhwm = 0  # memory is bounded by output credit, not by zmq
        socket.rcvhwm = 0
        socket.connect(self._endpoint)
        channel = WorkerChannel(socket, self._key)
        self._sendq = asyncio.Queue()

        def wake() -> None:
            loop.call_soon_threadsafe(self._drain)

        self._outbox.attach(self._ship, wake)
        for name, fd in self._pipes.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read_pipe, name, fd)
        self._started.set()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._send_loop(channel))
            tasks.create_task(self._recv_loop(channel))

    # -- sending ----------------------------------------------------------

    def send_urgent(self, message: WorkerMessage) -> None:
        """Send a control message ahead of queued output; safe in a signal handler."""
        loop, sendq = self._loop, self._sendq
        if loop is not None and sendq is not None:
            loop.call_soon_threadsafe(sendq.put_nowait, message)

    def _ship(self, batch: list[WorkerMessage]) -> None:
        assert self._sendq is not None
        for message in batch:
            self._sendq.put_nowait(message)

    def _drain(self) -> None:
        self._outbox.drain()

    async def _send_loop(self, channel: WorkerChannel) -> None:
        assert self._sendq is not None
        while True:
            message = await self._sendq.get()
            await channel.send(message)

    # -- receiving --------------------------------------------------------

    async def _recv_loop(self, channel: WorkerChannel) -> None:
        while True:
            try:
                message = await channel.recv()
            except ProtocolError as exc:
                logger.warning("worker dropped a message reason=%s", exc)
                continue
            if message.kind is Kind.CREDIT:
                self._outbox.grant(int(message.content.get("nbytes", 0)))
                self._resume_pipes()
            elif message.kind is Kind.FLUSHED:
                self._outbox.flushed(int(message.content.get("flush_id", 0)))
            elif message.kind is Kind.INPUT_REPLY:
                value = message.content.get("value")
                self._on_input_reply(
                    str(message.content.get("input_id", "")),
                    value if isinstance(value, str) else None,
                )
            else:
                self._requests.put(message)

    # -- capture pipes ----------------------------------------------------

    def _read_pipe(self, name: str, fd: int) -> None:
        self._read_pipe_once(name, fd)
        if not self._outbox.has_credit() and name not in self._paused:
            # Stop reading: whoever writes blocks on the full pipe until the
            # kernel has published enough (see `_resume_pipes`).
            assert self._loop is not None
            self._loop.remove_reader(fd)
            self._paused.add(name)

    def _read_pipe_once(self, name: str, fd: int) -> bool:
        with self._reading:
            try:
                data = os.read(fd, PIPE_READ_SIZE)
            except BlockingIOError:
                return False
            if data:
                decoder = self._decoders[name]
                text = decoder.decode(data)
                if decoder.getstate()[0]:
                    self._split.add(name)
                else:
                    self._split.discard(name)
                self._outbox.write(name, text, self._fd_parent(), wait=False)
                return True
        assert self._loop is not None
        self._loop.remove_reader(fd)
        return False

    def _resume_pipes(self) -> None:
        if self._paused and self._outbox.has_credit():
            assert self._loop is not None
            for name in self._paused:
                self._loop.add_reader(
                    self._pipes[name], self._read_pipe, name, self._pipes[name]
                )
            self._paused.clear()

    def barrier(self) -> None:
        """Flush C stdio, drain the pipes and ship everything (main thread).

        Returns once all output written before the call is on its way, so a
        message posted next is ordered after it.
        """
        for finish in self.before_barrier:
            finish()
        _libc.fflush(None)
        self.catch_up()

    def catch_up(self) -> None:
        """Put fd text already written ahead of what comes next (any thread).

        Cheap when the pipes are quiet, so the worker's `sys.stdout` calls it
        at the start of each line: text a child process or C code wrote
        before a `print` then shows before it.
        """
        loop = self._loop
        if (
            loop is None
            or self._forked
            or threading.get_ident() == self.ident
            or self._pipes_quiet()
        ):
            return
        done = new_signal()
        loop.call_soon_threadsafe(self._barrier_in_loop, done)
        wait_for(done)

    def _after_fork(self) -> None:
        self._forked = True

    def _pipes_quiet(self) -> bool:
        """Whether no pipe byte is unread, half-decoded or on its way (any thread).

        Then everything written so far is already in the outbox, and the
        barrier needs no round trip through this thread.
        """
        with self._reading:
            if self._split:
                return False
            # Keeping the GIL matters: a release, however short, hands it to
            # this thread while output floods, and the writer waits its turn.
            ready: int = _poll_holding_gil(self._peek_at, len(self._peek), 0)
            return ready == 0

    def _barrier_in_loop(self, done: threading.Lock) -> None:
        try:
            for name, fd in self._pipes.items():
                while self._read_pipe_once(name, fd):
                    pass
                # A character cut off at a barrier is shown as broken there,
                # not carried into whatever comes after the barrier.
                with self._reading:
                    rest = self._decoders[name].decode(b"", final=True)
                    self._split.discard(name)
                if rest:
                    self._outbox.write(name, rest, self._fd_parent(), wait=False)
            self._outbox.drain()
        finally:
            done.release()
