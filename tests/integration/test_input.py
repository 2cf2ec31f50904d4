"""input() against real kernels: prompts, parents, ordering, threads, interrupts.

`test_cases_input.py` already covers getpass's password flag, input() from a
thread inside a running cell, a plain interrupted input() and allow_stdin
false failing fast; this module covers `sys.stdin.readline`, the parent of
each input_request, the flush barrier before it, prompts left open when
their cell ends or asked while no cell runs, the exception allow_stdin false
raises, KeyboardInterrupt caught around input(), and a stale input_reply.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
from kernel_driver import Execution, KernelDriver

PROMPT_TIMEOUT = 20.0  # s for a cell's input_request to reach the test

READ_LINE = """\
import sys
line = sys.stdin.readline()
print(repr(line))
"""

# Main thread first, then a thread the cell starts: both prompts belong to it.
ASK_TWICE = """\
import threading
first = input('main? ')
answers = []
asker = threading.Thread(target=lambda: answers.append(input('thread? ')))
asker.start()
asker.join(15)
print(first, answers)
"""

# Three kinds of output that must all be out before the prompt: a full
# line, text without a newline (still coalescing), and a write to fd 1.
OUTPUT_THEN_ASK = """\
import os, sys
print('line-before-prompt')
sys.stdout.write('partial-before-prompt')
os.write(1, b'fd-before-prompt\\n')
reply = input('go? ')
print('got', reply)
"""
OUTPUT_BEFORE_PROMPT = (
    "line-before-prompt",
    "partial-before-prompt",
    "fd-before-prompt",
)

# The thread's prompt is open when the cell ends; the cell waits long enough
# for the prompt to reach the test (which the test checks).
ABANDONED_PROMPT = """\
import threading, time
outcome = []
def ask():
    try:
        outcome.append(('value', input('late? ')))
    except BaseException as exc:
        outcome.append((type(exc).__name__, str(exc)))
asker = threading.Thread(target=ask, daemon=True)
asker.start()
time.sleep(1.0)
"""

REPORT_ABANDONED = """\
asker.join(10)
print(asker.is_alive(), outcome)
"""

# The thread asks half a second after its cell ended, while no cell runs.
ASK_BETWEEN_CELLS = """\
import threading, time
between = []
def ask_later():
    time.sleep(0.5)
    started = time.monotonic()
    try:
        between.append(('value', input('nobody? ')))
    except BaseException as exc:
        between.append((type(exc).__name__, str(exc)))
    between.append(time.monotonic() - started)
idle_asker = threading.Thread(target=ask_later, daemon=True)
idle_asker.start()
"""

REPORT_BETWEEN = """\
idle_asker.join(10)
kind, message = between[0]
print(idle_asker.is_alive(), kind, between[1] < 1.0)
print(message)
"""

CATCH_INTERRUPTED_INPUT = """\
try:
    input('interrupt me? ')
except KeyboardInterrupt:
    print('KeyboardInterrupt raised in input()')
kept = 'still here'
"""


def _wait_for_prompt(driver: KernelDriver, cell: Execution, count: int = 1) -> None:
    asked = driver.wait_until(lambda: len(cell.input_requests) >= count, PROMPT_TIMEOUT)
    assert asked, f"no input_request #{count} within {PROMPT_TIMEOUT:g} s"


def _input_requests(driver: KernelDriver) -> list[tuple[float, dict[str, Any]]]:
    return [
        (at, message)
        for at, message in driver.all_stdin
        if message["header"]["msg_type"] == "input_request"
    ]


def _requests_of(driver: KernelDriver, cell: Execution) -> list[dict[str, Any]]:
    """Whole input_request messages parented to `cell`, in arrival order."""
    return [
        message
        for _at, message in _input_requests(driver)
        if message["parent_header"].get("msg_id") == cell.msg_id
    ]


def _interrupt(driver: KernelDriver, cell: Execution) -> None:
    """interrupt_request on the client's control channel; waits for its reply."""
    client = driver.client
    request = client.session.msg("interrupt_request", {})
    cell.interrupted_at.append(time.monotonic())
    client.control_channel.send(request)
    deadline = time.monotonic() + 10.0
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            reply = client.control_channel.get_msg(timeout=remaining)
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            return
    pytest.fail("no interrupt_reply within 10 s")


def _answer(driver: KernelDriver, request: dict[str, Any], value: str) -> None:
    """Send an input_reply whose parent is `request`, as a notebook frontend does."""
    client = driver.client
    reply = client.session.msg("input_reply", {"value": value}, parent=request)
    client.stdin_channel.send(reply)


def test_stdin_readline_prompts_and_returns_the_line(driver: KernelDriver) -> None:
    """sys.stdin.readline() asks the frontend and returns the answer plus newline."""
    cell = driver.execute(READ_LINE, stdin=["typed text"], timeout=20)

    assert cell.status == "ok", cell.reply
    assert len(cell.input_requests) == 1
    assert cell.input_requests[0].get("password") is False
    assert cell.stdout == "'typed text\\n'\n"


def test_input_requests_are_parented_to_the_execute_request(
    driver: KernelDriver,
) -> None:
    """Prompts from the cell and from a thread it started name the cell as parent."""
    cell = driver.execute(ASK_TWICE, stdin=["one", "two"], timeout=30)

    assert cell.status == "ok", cell.reply
    assert cell.stdout == "one ['two']\n"
    requests = [message for _at, message in _input_requests(driver)]
    assert [r["content"]["prompt"] for r in requests] == ["main? ", "thread? "]
    for request in requests:
        assert request["parent_header"].get("msg_id") == cell.msg_id
        assert request["parent_header"].get("msg_type") == "execute_request"


def test_output_before_input_reaches_iopub_before_the_prompt(
    driver: KernelDriver,
) -> None:
    """Lines, unterminated text and fd 1 writes all arrive before input_request.

    When the prompt is read, IOPub is drained of what has already arrived (the
    driver reads one message per ready socket per poll, so a prompt can be read
    while earlier IOPub messages still queue). Several rounds, because the two
    channels race.
    """
    iopub = driver.client.iopub_channel.socket
    for round_number in range(16):
        cell = driver.submit(OUTPUT_THEN_ASK)
        _wait_for_prompt(driver, cell)
        driver.wait_until(lambda: not iopub.poll(0), 1.0)
        before = cell.stdout
        [request] = _requests_of(driver, cell)
        _answer(driver, request, "yes")
        driver.wait(cell, timeout=20)

        assert cell.status == "ok", cell.reply
        assert "got yes" in cell.stdout
        for text in OUTPUT_BEFORE_PROMPT:
            assert text in before, f"round {round_number}: {text!r} came after"


def test_prompt_left_open_when_its_cell_ends_fails_with_eoferror(
    driver: KernelDriver,
) -> None:
    """A thread still waiting on input() when the cell ends gets EOFError."""
    cell = driver.execute(ABANDONED_PROMPT, timeout=30)

    assert cell.status == "ok", cell.reply
    assert len(cell.input_requests) == 1, "the prompt was not open during the cell"
    report = driver.execute(REPORT_ABANDONED, timeout=30)
    assert report.status == "ok", report.reply
    assert report.stdout.startswith("False [('EOFError'"), report.stdout
    assert report.input_requests == []


def test_input_from_thread_while_no_cell_runs_fails_at_once(
    driver: KernelDriver,
) -> None:
    """input() between cells raises EOFError at once, saying no cell runs."""
    cell = driver.execute(ASK_BETWEEN_CELLS, timeout=20)
    assert cell.status == "ok", cell.reply

    driver.settle(1.5)

    assert _input_requests(driver) == [], "a prompt went out while no cell ran"
    report = driver.execute(REPORT_BETWEEN, timeout=20)
    assert report.status == "ok", report.reply
    first_line, message = report.stdout.splitlines()[:2]
    assert first_line == "False EOFError True"
    assert "no cell" in message


def test_input_without_stdin_raises_stdin_not_implemented(
    driver: KernelDriver,
) -> None:
    """allow_stdin=false makes input() raise StdinNotImplementedError."""
    cell = driver.execute("answer = input('question? ')", allow_stdin=False, timeout=15)

    assert cell.status == "error"
    assert cell.ename == "StdinNotImplementedError", cell.reply
    assert _input_requests(driver) == []
    caught = driver.execute(
        "from IPython.core.error import StdinNotImplementedError\n"
        "try:\n"
        "    input('question? ')\n"
        "except StdinNotImplementedError:\n"
        "    print('caught')\n",
        allow_stdin=False,
        timeout=15,
    )
    assert caught.status == "ok", caught.reply
    assert caught.stdout == "caught\n"


def test_interrupt_during_input_raises_keyboardinterrupt_in_user_code(
    driver: KernelDriver,
) -> None:
    """The interrupt surfaces inside input(), where user code can catch it."""
    cell = driver.submit(CATCH_INTERRUPTED_INPUT)
    _wait_for_prompt(driver, cell)

    _interrupt(driver, cell)
    driver.wait(cell, timeout=20)
    caught = driver.wait_until(lambda: "raised in input()" in cell.stdout, 10.0)

    assert caught, f"user code did not see KeyboardInterrupt: {cell.reply}"
    assert cell.stdout == "KeyboardInterrupt raised in input()\n"
    assert cell.seconds_after_interrupt <= 2.0
    if cell.status != "ok":
        # The worker's acknowledgement missed the kernel's window (a loaded
        # machine), so the kernel answered for the cell itself.
        assert cell.ename == "KeyboardInterrupt", cell.reply
    after = driver.execute("print(kept)")
    assert after.stdout == "still here\n"


def test_stale_input_reply_after_interrupt_never_answers_next_prompt(
    driver: KernelDriver,
) -> None:
    """A reply to an interrupted prompt, sent while a new one is open, is dropped."""
    first = driver.submit("name = input('first? ')")
    _wait_for_prompt(driver, first)
    [(_at, old_request)] = _input_requests(driver)
    _interrupt(driver, first)
    driver.wait(first, timeout=20)
    assert first.ename == "KeyboardInterrupt", first.reply

    second = driver.submit("name = input('second? ')\nprint('got', repr(name))")
    _wait_for_prompt(driver, second)
    _answer(driver, old_request, "stale answer")
    driver.settle(1.0)

    assert second.reply is None, f"the stale reply ended the cell: {second.stdout!r}"
    new_request = _input_requests(driver)[-1][1]
    assert new_request["content"]["prompt"] == "second? "
    _answer(driver, new_request, "fresh answer")
    driver.wait(second, timeout=20)
    assert second.status == "ok", second.reply
    assert second.stdout == "got 'fresh answer'\n"
