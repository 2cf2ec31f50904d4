"""Tests of `pyrepl3_kernel.worker.outbox.Outbox` with fake I/O-thread callbacks.

`wake` only records that the I/O thread was asked to run; the test then plays
the I/O thread itself by calling `drain`, `grant` and `flushed`. Writers that
must block run in a helper thread, and every wait on them has a timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyrepl3_kernel.protocol.messages import Kind, WorkerMessage
from pyrepl3_kernel.worker import outbox as outbox_module
from pyrepl3_kernel.worker.outbox import Outbox

TIMEOUT = 10.0  # s: how long a test waits for a helper thread before failing

CELL = {"msg_id": "cell-1"}
OTHER_CELL = {"msg_id": "cell-2"}


class FakeIOThread:
    """Receives shipped batches; `woken` is set each time a drain is requested."""

    def __init__(self) -> None:
        self.batches: list[list[WorkerMessage]] = []
        self.wakes = 0
        self.woken = threading.Event()

    def ship(self, batch: list[WorkerMessage]) -> None:
        self.batches.append(batch)

    def wake(self) -> None:
        self.wakes += 1
        self.woken.set()

    @property
    def shipped(self) -> list[WorkerMessage]:
        return [message for batch in self.batches for message in batch]


class Helper:
    """Runs `fn` in a thread; `started` and `finished` are the handshake."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self.started.wait(TIMEOUT)

    def _main(self) -> None:
        self.started.set()
        try:
            self._fn()
        except BaseException as exc:  # handed to the test by `join`
            self.error = exc
        finally:
            self.finished.set()

    def join(self) -> None:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "helper thread still blocked"
        if self.error is not None:
            raise self.error


@pytest.fixture
def io() -> FakeIOThread:
    return FakeIOThread()


def _outbox(io: FakeIOThread, window: int = 1000) -> Outbox:
    outbox = Outbox(window)
    outbox.attach(io.ship, io.wake)
    return outbox


def _stream(text: str, name: str = "stdout") -> tuple[Kind, str, str]:
    return (Kind.STREAM, name, text)


def _summary(messages: list[WorkerMessage]) -> list[tuple[Kind, str, str]]:
    return [
        (m.kind, m.content.get("name", ""), m.content.get("text", "")) for m in messages
    ]


def test_outbox_coalesces_consecutive_writes_of_one_stream(io: FakeIOThread) -> None:
    outbox = _outbox(io)

    outbox.write("stdout", "a", CELL, wait=False)
    outbox.write("stdout", "b", CELL, wait=False)
    outbox.write("stderr", "c", CELL, wait=False)
    outbox.write("stdout", "d", CELL, wait=False)
    outbox.write("stdout", "e", OTHER_CELL, wait=False)
    outbox.drain()

    assert _summary(io.shipped) == [
        _stream("ab"),
        _stream("c", "stderr"),
        _stream("d"),
        _stream("e"),
    ]
    assert [m.parent for m in io.shipped] == [CELL, CELL, CELL, OTHER_CELL]
    assert io.wakes == 1, "one wake-up covers everything until the next drain"


def test_outbox_keeps_order_of_text_and_posted_messages(io: FakeIOThread) -> None:
    outbox = _outbox(io)
    display = WorkerMessage(Kind.DISPLAY_DATA, {"data": {}}, parent=CELL)

    outbox.write("stdout", "before", CELL, wait=False)
    outbox.post(display)
    outbox.write("stdout", "after", CELL, wait=False)
    outbox.drain()
    outbox.write("stdout", "next batch", CELL, wait=False)
    outbox.drain()

    assert io.batches[0][1] is display
    assert _summary(io.shipped) == [
        _stream("before"),
        (Kind.DISPLAY_DATA, "", ""),
        _stream("after"),
        _stream("next batch"),
    ]


def test_outbox_without_eager_wakes_only_at_line_end(io: FakeIOThread) -> None:
    outbox = _outbox(io)

    outbox.write("stdout", "partial", CELL, wait=False, eager=False)
    assert io.wakes == 0
    outbox.write("stdout", "\n", CELL, wait=False, eager=False)
    assert io.wakes == 1
    outbox.drain()

    assert _summary(io.shipped) == [_stream("partial\n")]


def test_outbox_ignores_empty_writes(io: FakeIOThread) -> None:
    outbox = _outbox(io)

    outbox.write("stdout", "", CELL, wait=True)
    outbox.drain()

    assert io.wakes == 0
    assert io.batches == []


def test_outbox_credit_window_blocks_writer_until_grant(io: FakeIOThread) -> None:
    outbox = _outbox(io, window=10)
    outbox.write("stdout", "12345678", CELL, wait=False)
    outbox.drain()  # 8 in flight
    outbox.write("stdout", "9", CELL, wait=False, eager=False)  # 1 pending, no wake
    assert outbox.has_credit()  # 9 of 10 used
    io.woken.clear()

    writer = Helper(lambda: outbox.write("stdout", "abcde", CELL, wait=True))

    # The writer wakes the I/O thread from inside its credit wait: it is blocked.
    assert io.woken.wait(TIMEOUT)
    outbox.drain()  # ships "9": 9 in flight, the writer still does not fit
    assert not writer.finished.is_set()

    outbox.grant(9)
    writer.join()
    outbox.drain()

    assert _summary(io.shipped) == [
        _stream("12345678"),
        _stream("9"),
        _stream("abcde"),
    ]


def test_outbox_grant_beyond_in_flight_does_not_go_negative(io: FakeIOThread) -> None:
    outbox = _outbox(io, window=10)
    outbox.write("stdout", "12345", CELL, wait=False)
    outbox.drain()

    outbox.grant(100)
    assert outbox.has_credit()

    writer = Helper(lambda: outbox.write("stdout", "x" * 10, CELL, wait=True))
    writer.join()  # 0 in flight + 10 fits the window exactly


def test_outbox_write_larger_than_window_passes_when_nothing_in_flight(
    io: FakeIOThread,
) -> None:
    outbox = _outbox(io, window=4)

    writer = Helper(lambda: outbox.write("stdout", "x" * 100, CELL, wait=True))
    writer.join()
    outbox.drain()

    assert _summary(io.shipped) == [_stream("x" * 100)]
    assert not outbox.has_credit()


def test_outbox_write_larger_than_window_waits_for_in_flight_to_clear(
    io: FakeIOThread,
) -> None:
    outbox = _outbox(io, window=4)
    outbox.write("stdout", "ab", CELL, wait=False)
    outbox.drain()  # 2 in flight
    outbox.write("stdout", "c", CELL, wait=False, eager=False)  # 1 pending
    io.woken.clear()

    writer = Helper(lambda: outbox.write("stdout", "x" * 100, CELL, wait=True))

    assert io.woken.wait(TIMEOUT), "woken from inside the credit wait"
    outbox.drain()  # 3 in flight
    outbox.grant(2)
    assert not writer.finished.is_set(), "1 byte is still in flight"
    outbox.grant(1)
    writer.join()
    outbox.drain()
    assert _summary(io.shipped)[-1] == _stream("x" * 100)


def test_outbox_control_messages_need_no_credit(io: FakeIOThread) -> None:
    outbox = _outbox(io, window=2)
    outbox.write("stdout", "full", CELL, wait=False)
    outbox.drain()

    outbox.post(WorkerMessage(Kind.INTERRUPT_ACK, {}, req="r1"))
    outbox.drain()

    assert io.shipped[-1].kind is Kind.INTERRUPT_ACK


def test_outbox_flush_waits_for_kernel_receipt(io: FakeIOThread) -> None:
    outbox = _outbox(io)
    outbox.write("stdout", "text", CELL, wait=False)
    outbox.drain()
    io.woken.clear()

    flusher = Helper(outbox.flush)

    assert io.woken.wait(TIMEOUT), "the flush request woke the I/O thread"
    outbox.drain()
    flush = io.shipped[-1]
    assert (flush.kind, flush.content) == (Kind.FLUSH, {"flush_id": 1})
    outbox.flushed(99)  # a receipt for another flush changes nothing
    assert not flusher.finished.is_set()

    outbox.flushed(1)
    flusher.join()


def test_outbox_flush_without_new_text_returns_at_once(io: FakeIOThread) -> None:
    outbox = _outbox(io)
    outbox.post(WorkerMessage(Kind.DISPLAY_DATA, {"data": {}}))

    Helper(outbox.flush).join()

    outbox.drain()
    assert [m.kind for m in io.shipped] == [Kind.DISPLAY_DATA]


def test_outbox_flush_before_attach_returns_at_once() -> None:
    outbox = Outbox(100)
    outbox.write("stdout", "text", CELL, wait=False)

    Helper(outbox.flush).join()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def _forked_outbox(
    io: FakeIOThread, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> Outbox:
    """An outbox as a forked child sees it, with fds 1 and 2 both on `pipe`."""
    outbox = _outbox(io)
    outbox.write("stdout", "lost in the child", CELL, wait=False)
    outbox._after_fork()  # what os.register_at_fork runs in a child
    _, write_end = pipe
    monkeypatch.setattr(
        outbox_module, "STREAM_FDS", {"stdout": write_end, "stderr": write_end}
    )
    return outbox


def test_outbox_in_forked_child_writes_to_stream_fds(
    io: FakeIOThread, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = _forked_outbox(io, pipe, monkeypatch)

    outbox.write("stdout", "out é\n", CELL, wait=True)
    outbox.write("stderr", "err 😀\n", CELL, wait=True)
    outbox.post(WorkerMessage(Kind.DISPLAY_DATA, {"data": {}}))
    Helper(outbox.flush).join()
    outbox.drain()

    assert outbox.is_forked
    assert os.read(pipe[0], 1000) == "out é\nerr 😀\n".encode()
    assert io.shipped == [], "a forked child has no channel"


def test_outbox_in_forked_child_writes_lone_surrogates(
    io: FakeIOThread, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = _forked_outbox(io, pipe, monkeypatch)

    outbox.write("stdout", "a\ud83db\n", CELL, wait=True)

    assert os.read(pipe[0], 1000) == "a\ufffdb\n".encode()


def test_outbox_in_forked_child_writes_whole_lines(
    io: FakeIOThread, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """print's text and newline leave together, so children never tear lines."""
    outbox = _forked_outbox(io, pipe, monkeypatch)

    outbox.write("stdout", "one whole line", CELL, wait=True)
    outbox.write("stdout", "\n", CELL, wait=True)
    outbox.write("stdout", "tail", CELL, wait=True)
    assert os.read(pipe[0], 1000) == b"one whole line\n"
    outbox.flush()
    assert os.read(pipe[0], 1000) == b"tail"
