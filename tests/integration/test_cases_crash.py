"""Cells that exit, crash or get killed: each must end with a reply.

A kernel running user code in-process dies in several of these; the session
here is expected to answer with an error and keep serving cells.
"""

from __future__ import annotations

from kernel_driver import KernelDriver

SYS_EXIT = """\
import sys
print('before exit')
sys.exit(3)
print('after exit')
"""

HARD_EXIT = """\
import os
print('about to exit', flush=True)
os._exit(1)
"""

NULL_READ = """\
import ctypes
ctypes.string_at(0)
"""

ENDLESS_REPR = """\
class Mirror:
    def __repr__(self):
        return 'Mirror(%r)' % (self,)
repr(Mirror())
"""

SELF_KILL = """\
import os, signal
print('allocating...', flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sys_exit_raises_systemexit_and_keeps_state(driver: KernelDriver) -> None:
    """sys.exit(3) ends the cell with SystemExit, state kept (notebook#4400)."""
    assert driver.execute("kept = 'state survives'").status == "ok"

    cell = driver.execute(SYS_EXIT)

    assert cell.status == "error"
    assert cell.ename == "SystemExit"
    assert "before exit" in cell.stdout
    assert "after exit" not in cell.stdout
    after = driver.execute("print(kept)")
    assert after.status == "ok"
    assert after.stdout == "state survives\n"
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_exit_builtin_gets_prompt_reply(driver: KernelDriver) -> None:
    """exit() in a cell is answered within 5 s, not left running (beakerx#2010)."""
    cell = driver.execute("print('bye')\nexit()", timeout=15)

    assert cell.status in ("ok", "error")
    assert cell.reply_seconds <= 5
    assert "bye" in cell.stdout


def test_os_exit_gives_error_reply_and_session_survives(
    driver: KernelDriver,
) -> None:
    """os._exit(1) ends the cell with an error reply (spyder#11970)."""
    cell = driver.execute(HARD_EXIT, timeout=15)

    assert cell.status == "error"
    assert cell.reply_seconds <= 10
    assert "about to exit" in cell.stdout
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_segfault_gives_error_reply_and_session_survives(
    driver: KernelDriver,
) -> None:
    """A NULL read via ctypes ends the cell with an error (vscode-jupyter#3251)."""
    cell = driver.execute(NULL_READ, timeout=15)

    assert cell.status == "error"
    assert cell.reply_seconds <= 10
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_unbounded_repr_recursion_raises_recursionerror(driver: KernelDriver) -> None:
    """Recursion through __repr__ gives RecursionError, kernel lives (ipykernel#776)."""
    cell = driver.execute(ENDLESS_REPR, timeout=30)

    assert cell.status == "error"
    assert cell.ename == "RecursionError"
    assert cell.reply_seconds <= 20
    driver.assert_alive()
    driver.assert_next_cell_works()


DEEP_RECURSION = """\
import sys
sys.setrecursionlimit(200_000)
def down(n):
    return down(n + 1)
try:
    down(0)
finally:
    sys.setrecursionlimit(3000)
"""


def test_deep_recursion_error_is_shown_without_formatting_every_frame(
    driver: KernelDriver,
) -> None:
    """A RecursionError 200,000 frames deep answers in seconds, not minutes.

    IPython formats each frame at about a millisecond; the middle of a very
    deep traceback is left out and a note says how many frames that was.
    """
    cell = driver.execute(DEEP_RECURSION, timeout=60)

    assert cell.status == "error"
    assert cell.ename == "RecursionError"
    assert "frames in the middle of this traceback are not shown" in cell.output_text()
    assert cell.reply_seconds <= 30
    driver.assert_next_cell_works()


def test_sigkill_of_code_process_gives_error_reply(driver: KernelDriver) -> None:
    """A SIGKILL, as from the OOM killer, ends the cell in error (jupyter/help#418)."""
    cell = driver.execute(SELF_KILL, timeout=15)

    assert cell.status == "error"
    assert cell.reply_seconds <= 10
    assert "allocating..." in cell.stdout
    driver.assert_alive()
    driver.assert_next_cell_works()
