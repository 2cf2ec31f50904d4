"""Tests of `pyrepl3_kernel.output.stage.OutputStage` with a recording publisher.

Each test runs on its own event loop. Tests that need output to wait for
tokens give the stage's token bucket a frozen fake clock (`frozen_clock`): the
bucket then never refills by itself, so nothing beyond the initial burst is
published until the test calls `hurry()`. No test depends on how long a
real timer takes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from pyrepl3_kernel.output import stage as stage_module
from pyrepl3_kernel.output.limiter import TokenBucket
from pyrepl3_kernel.output.stage import OutputStage
from pyrepl3_kernel.protocol.messages import Kind, WorkerMessage

TEST_TIMEOUT = 10.0  # s: a hung test fails here instead of at pytest-timeout's limit
SETTLE_TURNS = 20  # loop turns that let the publisher act on everything it can

CELL = {"msg_id": "cell-1", "msg_type": "execute_request"}
OTHER_CELL = {"msg_id": "cell-2", "msg_type": "execute_request"}


@dataclass(frozen=True)
class Published:
    kind: Kind
    content: dict[str, Any]
    parent: dict[str, Any]
    buffers: tuple[bytes, ...]
    metadata: dict[str, Any]


class Recorder:
    """The `publish` callback: keeps every message, optionally logs to `log`."""

    def __init__(self, log: list[tuple[str, Any]] | None = None) -> None:
        self.messages: list[Published] = []
        self._log = log

    def __call__(
        self,
        kind: Kind,
        content: dict[str, Any],
        parent: dict[str, Any],
        buffers: tuple[bytes, ...],
        metadata: dict[str, Any],
    ) -> None:
        self.messages.append(Published(kind, content, parent, buffers, metadata))
        if self._log is not None:
            self._log.append(("publish", content.get("text")))

    @property
    def texts(self) -> list[tuple[str, str, str]]:
        """(stream name, text, parent msg_id) of each stream message."""
        return [
            (m.content["name"], m.content["text"], m.parent["msg_id"])
            for m in self.messages
            if m.kind is Kind.STREAM
        ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Give every OutputStage built in the test a bucket on a frozen clock."""
    clock = FakeClock()

    def bucket(
        msgs_per_s: float, bytes_per_s: float, _loop_clock: Callable[[], float]
    ) -> TokenBucket:
        return TokenBucket(msgs_per_s, bytes_per_s, clock)

    monkeypatch.setattr(stage_module, "TokenBucket", bucket)
    return clock


def _run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await coro

    asyncio.run(bounded())


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _drain(stage: OutputStage, parent: dict[str, Any] | None = None) -> None:
    await asyncio.wait_for(stage.drain(parent), TEST_TIMEOUT)


async def _hurried_drain(
    stage: OutputStage, parent: dict[str, Any] | None = None
) -> None:
    drained = asyncio.ensure_future(stage.drain(parent))
    await _turns(1)  # the barrier is queued: hurry covers everything up to it
    stage.hurry()
    await asyncio.wait_for(drained, TEST_TIMEOUT)


async def _close(stage: OutputStage) -> None:
    await asyncio.wait_for(stage.close(), TEST_TIMEOUT)
    assert asyncio.all_tasks() == {asyncio.current_task()}


def _slow_stage(publish: Recorder, **kwargs: Any) -> OutputStage:
    """A stage whose bucket holds one message: the first goes, the rest wait."""
    return OutputStage(publish, msg_rate_limit=1.0, data_rate_limit=1e9, **kwargs)


def _stream(name: str, text: str, parent: dict[str, Any]) -> WorkerMessage:
    return WorkerMessage(Kind.STREAM, {"name": name, "text": text}, parent=parent)


def test_stage_keeps_order_across_streams_and_displays() -> None:
    async def main() -> None:
        publish = Recorder()
        stage = OutputStage(publish)
        display = WorkerMessage(
            Kind.DISPLAY_DATA,
            {"data": {"text/plain": "D"}, "metadata": {}},
            parent=CELL,
            buffers=(b"\x00\x01",),
            extra={"jmeta": {"k": 1}},
        )

        stage.write("stdout", "a", CELL)
        stage.accept(display)
        stage.write("stderr", "b", CELL)
        stage.accept(_stream("stdout", "c", CELL))
        stage.post(Kind.EXECUTE_RESULT, {"data": {"text/plain": "1"}}, CELL)
        await _drain(stage)

        assert [(m.kind, m.content.get("text")) for m in publish.messages] == [
            (Kind.STREAM, "a"),
            (Kind.DISPLAY_DATA, None),
            (Kind.STREAM, "b"),
            (Kind.STREAM, "c"),
            (Kind.EXECUTE_RESULT, None),
        ]
        shown = publish.messages[1]
        assert shown == Published(
            Kind.DISPLAY_DATA, display.content, CELL, (b"\x00\x01",), {"k": 1}
        )
        assert stage.published_messages == 5
        assert repr(stage) == "<OutputStage queued=0 backlog=0>"
        await _close(stage)

    _run(main())


def test_stage_merges_stream_text_while_it_waits_for_tokens(
    frozen_clock: FakeClock,
) -> None:
    async def main() -> None:
        publish = Recorder()
        stage = _slow_stage(publish)
        stage.write("stdout", "first", CELL)
        await _drain(stage)  # spends the only token

        stage.write("stdout", "a", CELL)
        await _turns(SETTLE_TURNS)
        stage.accept(_stream("stdout", "b", CELL))
        await _turns(SETTLE_TURNS)
        stage.write("stdout", "c\n", CELL)
        await _turns(SETTLE_TURNS)
        assert publish.texts == [("stdout", "first", "cell-1")]
        assert repr(stage) == "<OutputStage queued=1 backlog=4>"

        await _hurried_drain(stage)

        assert publish.texts == [
            ("stdout", "first", "cell-1"),
            ("stdout", "abc\n", "cell-1"),
        ]
        await _close(stage)

    _run(main())


def test_stage_never_merges_across_streams_parents_or_displays(
    frozen_clock: FakeClock,
) -> None:
    async def main() -> None:
        publish = Recorder()
        stage = _slow_stage(publish)
        stage.post(Kind.CLEAR_OUTPUT, {"wait": False}, CELL)  # spends the token

        stage.write("stdout", "a", CELL)
        stage.write("stdout", "b", OTHER_CELL)
        stage.write("stdout", "c", CELL)
        stage.write("stderr", "d", CELL)
        stage.post(Kind.DISPLAY_DATA, {"data": {}}, CELL)
        stage.write("stderr", "e", CELL)
        await _hurried_drain(stage)

        assert publish.texts == [
            ("stdout", "a", "cell-1"),
            ("stdout", "b", "cell-2"),
            ("stdout", "c", "cell-1"),
            ("stderr", "d", "cell-1"),
            ("stderr", "e", "cell-1"),
        ]
        assert [m.kind for m in publish.messages].count(Kind.DISPLAY_DATA) == 1
        await _close(stage)

    _run(main())


def test_stage_drain_returns_after_everything_queued_before_it(
    frozen_clock: FakeClock,
) -> None:
    async def main() -> None:
        publish = Recorder()
        stage = _slow_stage(publish)
        stage.write("stdout", "one", CELL)
        stage.post(Kind.DISPLAY_DATA, {"data": {}}, CELL)
        stage.write("stdout", "two", CELL)

        drained = asyncio.ensure_future(stage.drain())
        await _turns(1)  # the barrier is queued
        stage.write("stdout", "after the barrier", CELL)
        await _turns(SETTLE_TURNS)
        assert not drained.done()
        assert len(publish.messages) == 1, "only the burst's one message went out"

        stage.hurry()
        await asyncio.wait_for(drained, TEST_TIMEOUT)

        assert [m.content.get("text") for m in publish.messages[:3]] == [
            "one",
            None,
            "two",
        ], "text written after the barrier is not merged into text before it"
        await _close(stage)

    _run(main())


def test_stage_drain_with_nothing_queued_returns_at_once() -> None:
    async def main() -> None:
        stage = OutputStage(Recorder())
        drained = asyncio.ensure_future(stage.drain())

        await _turns(1)

        assert drained.done()
        await _close(stage)

    _run(main())


def test_stage_publishes_after_one_shot_wakeup_without_hurry() -> None:
    """Beyond the burst, messages wait on a loop timer and still all go out."""

    async def main() -> None:
        publish = Recorder()
        stage = OutputStage(publish, msg_rate_limit=200.0)
        parents = [{"msg_id": f"cell-{n}"} for n in range(205)]

        for n, parent in enumerate(parents):
            stage.write("stdout", str(n), parent)
        await _drain(stage)

        assert [text for _, text, _ in publish.texts] == [str(n) for n in range(205)]
        await _close(stage)

    _run(main())


def test_stage_pays_back_credit_equal_to_published_text(
    frozen_clock: FakeClock,
) -> None:
    async def main() -> None:
        log: list[tuple[str, Any]] = []
        publish = Recorder(log)
        stage = _slow_stage(publish)

        def credit_a(nbytes: int) -> None:
            log.append(("credit a", nbytes))

        def credit_b(nbytes: int) -> None:
            log.append(("credit b", nbytes))

        stage.post(Kind.DISPLAY_DATA, {"data": {}}, CELL)
        stage.write("stdout", "ab", CELL, credit_a)
        stage.write("stdout", "cdé", CELL, credit_a)
        stage.write("stdout", "ef", CELL, credit_b)
        stage.accept(_stream("stdout", "g", CELL), credit_a)
        await _hurried_drain(stage)

        assert log == [
            ("publish", None),
            ("publish", "abcdé"),
            ("credit a", 5),
            ("publish", "ef"),
            ("credit b", 2),
            ("publish", "g"),
            ("credit a", 1),
        ]
        await _close(stage)

    _run(main())


def test_stage_drop_mode_drops_excess_and_drain_publishes_notice(
    frozen_clock: FakeClock,
) -> None:
    async def main() -> None:
        publish = Recorder()
        credited: list[int] = []
        stage = _slow_stage(publish, drop_excess=True, drop_backlog=8)

        pay = credited.append  # one callable per worker, as the kernel passes

        stage.write("stdout", "12345", CELL, pay)
        stage.write("stdout", "6789", CELL, pay)  # 5 + 4 > 8 waiting: dropped
        stage.write("stdout", "ab", CELL, pay)
        stage.write("stdout", "xyz", OTHER_CELL, pay)  # 7 + 3 > 8: dropped
        assert credited == [4, 3], "dropped text is credited back at once"

        await _hurried_drain(stage, CELL)

        assert publish.texts[0] == ("stdout", "12345ab", "cell-1")
        name, notice, parent_id = publish.texts[1]
        assert (name, parent_id) == ("stderr", "cell-1")
        assert "4 characters of output were dropped" in notice
        assert "OutputStage.drop_excess" in notice
        written = ["12345", "6789", "ab", "xyz"]
        assert sum(credited) == sum(map(len, written)), "every character paid back"

        await _hurried_drain(stage, CELL)
        assert len(publish.texts) == 2, "one notice per drop, not per drain"
        await _hurried_drain(stage, OTHER_CELL)
        assert "3 characters" in publish.texts[2][1]
        await _close(stage)

    _run(main())


def test_stage_keeps_everything_when_not_in_drop_mode(
    frozen_clock: FakeClock,
) -> None:
    async def main() -> None:
        publish = Recorder()
        stage = _slow_stage(publish, drop_backlog=2)
        stage.post(Kind.DISPLAY_DATA, {"data": {}}, CELL)

        stage.write("stdout", "x" * 100, CELL)
        await _hurried_drain(stage, CELL)

        assert publish.texts == [("stdout", "x" * 100, "cell-1")]
        await _close(stage)

    _run(main())


def test_stage_drops_malformed_stream_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        publish = Recorder()
        stage = OutputStage(publish)

        with caplog.at_level(logging.WARNING, logger="pyrepl3_kernel.output.stage"):
            stage.accept(WorkerMessage(Kind.STREAM, {"name": "stdout", "text": 3}))
            stage.accept(WorkerMessage(Kind.STREAM, {"name": "fd9", "text": "x"}))
        await _drain(stage)

        assert publish.messages == []
        assert caplog.text.count("dropped malformed stream message") == 2
        await _close(stage)

    _run(main())


def test_stage_survives_a_failing_publish_and_still_pays_credit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        credited: list[int] = []
        pay = credited.append
        published: list[str] = []

        def publish(kind: Kind, content: dict[str, Any], *_: Any) -> None:
            if content["text"] == "bad":
                raise RuntimeError("iopub socket closed")
            published.append(content["text"])

        stage = OutputStage(publish)
        with caplog.at_level(logging.ERROR, logger="pyrepl3_kernel.output.stage"):
            stage.write("stdout", "bad", CELL, pay)
            stage.write("stdout", "good", OTHER_CELL, pay)
            await _drain(stage)

        assert published == ["good"]
        assert credited == [3, 4]
        assert "could not publish output" in caplog.text
        await _close(stage)

    _run(main())
