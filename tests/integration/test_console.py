"""`jupyter console --kernel <name>` driven through a pseudo-terminal, as people use it.

The console is the venv's own (`python -m jupyter_console`) with prompt_toolkit
drawing its prompts, so the transcript is full of escape sequences; the patterns
here skip them rather than turn colours off, to test the console as shipped.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pexpect
import psutil
import pytest

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")

# Seconds for the console to start its kernel and draw the first prompt.
STARTUP_TIMEOUT = 60.0

# Seconds for anything typed at a prompt to show its effect.
EXPECT_TIMEOUT = 30.0

# Seconds from the exit request until the console process has ended.
EXIT_TIMEOUT = 30.0

# Seconds the kernel and its children may outlive the console.
SHUTDOWN_TIMEOUT = 15.0

# prompt_toolkit colours the prompt number separately from the brackets.
_STYLE = r"(?:\x1b\[[\d;]*m)*"
_ANSI_ESCAPE = re.compile(r"\x1b\[[?\d;]*[A-Za-z]")

_SCRUBBED_VARIABLES = ("PYTEST_CURRENT_TEST", "MPLBACKEND")


def _prompt(number: int) -> str:
    return rf"In \[{_STYLE}{number}{_STYLE}\]: "


class _Console:
    """The console under a pty, its transcript, and every process seen below it."""

    def __init__(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_VARIABLES}
        env["IPYTHONDIR"] = str(tmp_path / "ipython")
        env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
        # The pty never answers prompt_toolkit's cursor-position query.
        env["PROMPT_TOOLKIT_NO_CPR"] = "1"
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "jupyter_console", "--kernel", KERNEL_NAME],
            cwd=str(tmp_path),
            env=env,
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(24, 120),
            timeout=EXPECT_TIMEOUT,
        )
        self.child.logfile_read = self.transcript
        self.seen: dict[int, psutil.Process] = {}

    def expect(self, pattern: str | type[pexpect.EOF], timeout: float) -> None:
        try:
            self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            text = _ANSI_ESCAPE.sub("", self.transcript.getvalue())
            pytest.fail(
                f"console never showed {pattern!r} ({exc.__class__.__name__})\n{text}"
            )

    def note_processes(self) -> None:
        """Remember the console's current descendants (kernel, workers, spares)."""
        for process in psutil.Process(self.child.pid).children(recursive=True):
            self.seen[process.pid] = process

    def wait_exit_status(self, timeout: float) -> int | None:
        """Wait for the console to end; return its exit status (None if signalled)."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            ended = pool.submit(self.child.wait)
            try:
                ended.result(timeout=timeout)
            except TimeoutError:
                # Killing the console lets the waiting thread return.
                self.child.kill(9)
                pytest.fail(f"console still running {timeout} s after the exit request")
        status: int | None = self.child.exitstatus
        return status

    def close(self) -> list[psutil.Process]:
        """End whatever is left; return the processes that had to be killed."""
        if self.child.isalive():
            self.note_processes()
            self.child.close(force=True)
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=SHUTDOWN_TIMEOUT)
        for process in alive:
            process.kill()
        return alive


@pytest.fixture
def console(tmp_path: Path) -> Iterator[_Console]:
    session = _Console(tmp_path)
    try:
        yield session
    finally:
        leftovers = session.close()
        assert not leftovers, f"processes left after the console ended: {leftovers}"


def _ctrl_d_and_confirm(console: _Console) -> None:
    console.child.sendcontrol("d")
    console.expect(r"\(\[y\]/n\)\? ", EXPECT_TIMEOUT)
    console.child.send("y\r")


def _exit_call(console: _Console) -> None:
    console.child.send("exit()\r")


@pytest.mark.parametrize(
    "leave", [_exit_call, _ctrl_d_and_confirm], ids=["exit-call", "ctrl-d"]
)
def test_console_runs_a_line_and_exits_cleanly(
    console: _Console, leave: Callable[[_Console], None]
) -> None:
    """The console exits 0 and takes its kernel (and the kernel's children) along."""
    console.expect(_prompt(1), STARTUP_TIMEOUT)
    console.note_processes()
    assert console.seen, "the console started no kernel process"

    console.child.send("print(6*7)\r")
    console.expect(r"(?<!\d)42\r*\n", EXPECT_TIMEOUT)
    console.expect(_prompt(2), EXPECT_TIMEOUT)
    console.note_processes()

    leave(console)
    console.expect(pexpect.EOF, EXIT_TIMEOUT)
    assert console.wait_exit_status(EXIT_TIMEOUT) == 0

    _, alive = psutil.wait_procs(list(console.seen.values()), timeout=SHUTDOWN_TIMEOUT)
    assert not alive, f"kernel processes outlived the console: {alive}"
