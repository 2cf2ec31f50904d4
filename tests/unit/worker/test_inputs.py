"""Tests of `pyrepl3_kernel.worker.inputs`: prompts matched to frontend replies.

Prompts that wait run in helper threads, as user code asks from its own
thread; the `post` callback hands each `input_request` to the test through a
thread-safe queue, so the test answers only once the prompt is out.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from IPython.core.error import StdinNotImplementedError

from pyrepl3_kernel.protocol.messages import Kind, WorkerMessage
from pyrepl3_kernel.worker.inputs import EOT, InputBroker, PromptStdin

TIMEOUT = 10.0  # s: how long a test waits for a helper thread before failing

CELL_HEADER = {"msg_id": "cell-1", "msg_type": "execute_request"}
CELL = ("r3", {"header": CELL_HEADER, "content": {"code": "input()"}}, True)


class Frontend:
    """Collects what the broker sends; `requests` yields each prompt in turn."""

    def __init__(self) -> None:
        self.requests: queue.Queue[WorkerMessage] = queue.Queue()
        self.urgent: list[WorkerMessage] = []

    def post(self, message: WorkerMessage) -> None:
        self.requests.put(message)

    def send_urgent(self, message: WorkerMessage) -> None:
        self.urgent.append(message)

    def next_request(self) -> WorkerMessage:
        return self.requests.get(timeout=TIMEOUT)


class Asker:
    """Runs one `fn()` in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], str]) -> None:
        self.result: str | None = None
        self.error: BaseException | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # handed to the test by `outcome`
            self.error = exc

    def outcome(self) -> str:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the prompt is still waiting"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _broker(
    frontend: Frontend, cell: tuple[str, dict[str, Any], bool] | None = CELL
) -> InputBroker:
    return InputBroker(frontend.post, frontend.send_urgent, lambda: cell)


def test_ask_without_running_cell_raises_eof_error() -> None:
    frontend = Frontend()
    broker = _broker(frontend, cell=None)

    with pytest.raises(EOFError, match="while no cell is running; nobody can answer"):
        broker.ask("name? ")

    assert frontend.requests.empty()


def test_ask_when_frontend_disallows_stdin_raises() -> None:
    frontend = Frontend()
    broker = _broker(frontend, cell=("r1", {"header": CELL_HEADER}, False))

    with pytest.raises(
        StdinNotImplementedError, match="frontend does not support input requests"
    ):
        broker.ask("name? ")

    assert frontend.requests.empty()


def test_ask_posts_input_request_for_the_running_cell() -> None:
    frontend = Frontend()
    broker = _broker(frontend)
    asker = Asker(lambda: broker.ask("secret: ", password=True))

    request = frontend.next_request()
    broker.resolve(request.extra["input_id"], "hunter2")

    assert asker.outcome() == "hunter2"
    assert request.kind is Kind.INPUT_REQUEST
    assert request.content == {"prompt": "secret: ", "password": True}
    assert request.parent == CELL_HEADER
    assert request.req == "r3"


def test_reply_resolves_the_waiter_it_names() -> None:
    frontend = Frontend()
    broker = _broker(frontend)
    first = Asker(lambda: broker.ask("first? "))
    first_id = frontend.next_request().extra["input_id"]
    second = Asker(lambda: broker.ask("second? "))
    second_id = frontend.next_request().extra["input_id"]
    assert first_id != second_id

    broker.resolve(second_id, "two")
    assert second.outcome() == "two"
    broker.resolve(first_id, "one")
    assert first.outcome() == "one"


def test_reply_with_unknown_or_stale_id_is_ignored() -> None:
    frontend = Frontend()
    broker = _broker(frontend)
    asker = Asker(lambda: broker.ask())
    input_id = frontend.next_request().extra["input_id"]

    broker.resolve("not-a-prompt", "wrong")
    broker.resolve(input_id, "right")
    assert asker.outcome() == "right"

    broker.resolve(input_id, "too late")  # the wait is gone: nothing happens
    later = Asker(lambda: broker.ask())
    broker.resolve(frontend.next_request().extra["input_id"], "fresh")
    assert later.outcome() == "fresh"


def test_fail_all_ends_every_waiter_with_eof_error() -> None:
    frontend = Frontend()
    broker = _broker(frontend)
    askers = [Asker(lambda: broker.ask()) for _ in range(2)]
    for _ in askers:
        frontend.next_request()

    broker.fail_all()

    for asker in askers:
        with pytest.raises(EOFError, match="input was cancelled"):
            asker.outcome()


@pytest.mark.parametrize("value", [EOT, None], ids=["ctrl-d", "no-value"])
def test_end_of_transmission_reply_means_eof(value: str | None) -> None:
    frontend = Frontend()
    broker = _broker(frontend)
    asker = Asker(lambda: broker.ask())

    broker.resolve(frontend.next_request().extra["input_id"], value)

    assert EOT == "\x04"
    with pytest.raises(EOFError):
        asker.outcome()


def test_interrupted_prompt_tells_kernel_and_raises_keyboard_interrupt() -> None:
    sent: list[WorkerMessage] = []

    def post(message: WorkerMessage) -> None:
        sent.append(message)
        raise KeyboardInterrupt  # SIGINT lands while the prompt is being sent

    urgent: list[WorkerMessage] = []
    broker = InputBroker(post, urgent.append, lambda: CELL)

    with pytest.raises(KeyboardInterrupt, match="Interrupted by user"):
        broker.ask("name? ")

    assert [(m.kind, m.req) for m in urgent] == [(Kind.INPUT_CANCEL, "r3")]
    assert urgent[0].content == {"input_id": sent[0].extra["input_id"]}
    broker.resolve(sent[0].extra["input_id"], "late")  # stale: ignored


def test_prompt_stdin_reads_one_line_per_reply_and_empty_at_eof() -> None:
    frontend = Frontend()
    broker = _broker(frontend)
    stdin = PromptStdin(broker)

    line = Asker(stdin.readline)
    broker.resolve(frontend.next_request().extra["input_id"], "hello")
    assert line.outcome() == "hello\n"

    at_eof = Asker(lambda: stdin.read())
    broker.resolve(frontend.next_request().extra["input_id"], EOT)
    assert at_eof.outcome() == ""
    assert stdin.readable() and not stdin.isatty()
