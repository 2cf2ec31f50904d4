"""input() and getpass() through the stdin channel, with and without a frontend."""

from __future__ import annotations

from kernel_driver import KernelDriver

ASK_PASSWORD = """\
import getpass
secret = getpass.getpass('Password: ')
print('length', len(secret))
"""

ASK_IN_THREAD = """\
import threading
answers = []
asker = threading.Thread(target=lambda: answers.append(input('from thread: ')))
asker.start()
asker.join(10)
print('thread got', answers)
"""


def test_getpass_sends_password_request_and_never_echoes_answer(
    driver: KernelDriver,
) -> None:
    """getpass asks with password=true and does not echo (vscode-python#9483)."""
    cell = driver.execute(ASK_PASSWORD, stdin=["s3cret-value"])

    assert cell.status == "ok"
    assert len(cell.input_requests) == 1
    assert cell.input_requests[0].get("prompt") == "Password: "
    assert cell.input_requests[0].get("password") is True
    assert "length 12" in cell.stdout
    assert "s3cret-value" not in cell.stdout


def test_interrupted_input_ends_cell_and_next_input_prompts_afresh(
    driver: KernelDriver,
) -> None:
    """An interrupt ends a pending input(); the next one works (ipykernel#400)."""
    waiting = driver.execute(
        "name = input('name? ')", interrupt_after=[1.0], timeout=20
    )

    assert waiting.status == "error"
    assert waiting.ename == "KeyboardInterrupt"
    assert waiting.seconds_after_interrupt <= 3
    assert waiting.input_requests, "input() sent no input_request"
    assert waiting.input_requests[0].get("prompt") == "name? "
    assert waiting.input_requests[0].get("password") is False

    again = driver.execute(
        "name = input('again? ')\nprint('hello', name)", stdin=["world"], timeout=20
    )
    assert again.status == "ok"
    assert "hello world" in again.stdout
    assert len(again.input_requests) == 1
    assert again.input_requests[0].get("prompt") == "again? "
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_input_without_frontend_stdin_fails_fast_without_request(
    driver: KernelDriver,
) -> None:
    """With allow_stdin=false input() errors at once, no request (nteract#4069)."""
    cell = driver.execute("reply = input('question? ')", allow_stdin=False, timeout=15)

    assert cell.status == "error"
    assert cell.reply_seconds <= 5
    assert cell.input_requests == []
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_input_from_thread_is_forwarded_and_answered(driver: KernelDriver) -> None:
    """input() in a thread reaches the frontend and gets its answer (spyder#12006)."""
    cell = driver.execute(ASK_IN_THREAD, stdin=["hello"], timeout=20)

    assert cell.status == "ok"
    assert "thread got ['hello']" in cell.stdout
    assert cell.input_requests, "input() in the thread sent no input_request"
    assert cell.input_requests[0].get("prompt") == "from thread: "
