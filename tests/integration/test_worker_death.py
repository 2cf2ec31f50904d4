"""A worker that dies costs the cell it ran and its variables, never the kernel.

Each kind of death while a cell runs must end that cell at once with a
`WorkerDied` error naming the exit code or signal, and the next cell must run
in a fresh worker with the execution count carrying on. Deaths while idle,
children of a dead worker, and workers that die while starting (a crash loop)
are covered too. Real kernels, driven through jupyter_client.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from kernel_driver import Execution, KernelTimeoutError
from kernel_processes import (
    KernelUnderTest,
    input_count,
    is_gone,
    running_kernel,
    wait_until,
)

DEATH_REPLY_S = 10.0  # s: a death must end its cell well before this (it takes ~0.1 s)
START_ATTEMPTS = 3  # SessionPool.start_attempts default: worker starts per request
CRASH_LOOP_REPLY_S = 30.0  # s: three failed starts with back-off, on a loaded machine
QUIET_WATCH_S = 2.0  # s: how long a kernel that gave up is watched for new workers
SAMPLE_S = 0.02  # s: between looks for short-lived workers (each lives >= 0.3 s)

SEGFAULT = "import ctypes\nctypes.string_at(0)"
ABORT = "import os\nos.abort()"
EXIT_3 = "import os\nos._exit(3)"
SELF_SIGKILL = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
# Python 3.11+ does not use the C stack for Python-to-Python calls, so a deep
# lambda recursion only eats memory; the C encoder of `json` recurses in C for
# each level of nesting, and without a recursion limit it runs off the stack.
C_STACK_OVERFLOW = """\
import json, sys
sys.setrecursionlimit(10**8)
nested = []
for _ in range(10**6):
    nested = [nested]
json.dumps(nested)
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelUnderTest]:
    """One default kernel (one warm spare) shared by the tests that crash it."""
    with running_kernel(tmp_path_factory.mktemp("ipython")) as started:
        yield started


def _error_text(cell: Execution) -> str:
    assert cell.reply is not None
    return "\n".join(
        [str(cell.reply.get("evalue", "")), *cell.reply.get("traceback", [])]
    )


def _assert_worker_died(cell: Execution, says: str) -> None:
    """The cell ended promptly with a WorkerDied reply and a matching error output."""
    assert cell.status == "error", cell.reply
    assert cell.ename == "WorkerDied", cell.reply
    assert cell.reply_seconds < DEATH_REPLY_S
    text = _error_text(cell)
    assert says in text, text
    assert "variables were lost" in text, text
    errors = cell.errors
    assert errors, f"no error output for the cell: {cell.iopub_types}"
    assert errors[-1]["ename"] == "WorkerDied"
    assert says in "\n".join(errors[-1]["traceback"])


@pytest.mark.parametrize(
    ("code", "says", "stack_shows"),
    [
        pytest.param(SEGFAULT, "killed by SIGSEGV", "string_at", id="segfault"),
        pytest.param(ABORT, "killed by SIGABRT", "ipython-input", id="abort"),
        pytest.param(EXIT_3, "exited with code 3", None, id="os-exit-3"),
        pytest.param(SELF_SIGKILL, "killed by SIGKILL", None, id="sigkill"),
        pytest.param(
            C_STACK_OVERFLOW, "killed by SIGSEGV", "json", id="c-stack-overflow"
        ),
    ],
)
def test_death_in_cell_ends_it_and_next_cell_gets_fresh_worker(
    kernel: KernelUnderTest, code: str, says: str, stack_shows: str | None
) -> None:
    kernel.wait_for_full_pool()
    before = kernel.worker_pid()
    previous = kernel.run("1").execution_count
    assert previous is not None

    cell = kernel.run(code)

    _assert_worker_died(cell, says)
    assert cell.execution_count == previous + 1
    assert input_count(cell) == previous + 1
    if stack_shows is not None:
        # faulthandler's dump of the Python stack reaches the user.
        assert stack_shows in _error_text(cell)
    after = kernel.run("import os\nprint(os.getpid())")
    assert after.status == "ok", after.reply
    assert int(after.stdout) != before
    assert after.execution_count == previous + 2
    assert input_count(after) == previous + 2


def test_output_flushed_just_before_death_is_delivered(kernel: KernelUnderTest) -> None:
    kernel.wait_for_full_pool()

    cell = kernel.run(
        "import os\nprint('last words', flush=True)\nos.kill(os.getpid(), 9)"
    )

    _assert_worker_died(cell, "killed by SIGKILL")
    assert cell.stdout == "last words\n"
    kinds = [t for t in cell.iopub_types if t in ("stream", "error")]
    assert kinds == ["stream", "error"]


def test_children_of_a_crashed_worker_are_killed(kernel: KernelUnderTest) -> None:
    kernel.wait_for_full_pool()
    started = kernel.run(
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print(child.pid)"
    )
    assert started.status == "ok", started.reply
    child = psutil.Process(int(started.stdout))
    assert child.name() == "sleep"

    cell = kernel.run(SEGFAULT)

    _assert_worker_died(cell, "killed by SIGSEGV")
    wait_until(lambda: is_gone(child), 5.0, f"the worker's child {child.pid} to go")


def test_worker_killed_while_idle_is_replaced_with_notice(
    kernel: KernelUnderTest,
) -> None:
    kernel.wait_for_full_pool()
    assert kernel.run("precious = 42").status == "ok"
    victim = kernel.worker_pid()
    spare = kernel.worker_pids() - {victim}

    os.kill(victim, signal.SIGKILL)
    # Adopting the spare starts a new one: then the kernel has seen the death.
    wait_until(
        lambda: bool(kernel.worker_pids() - spare - {victim}),
        30.0,
        "a replacement spare to start",
    )
    cell = kernel.run("import os\nprint(os.getpid())\nprint('precious' in dir())")

    assert cell.status == "ok", cell.reply
    pid, kept = cell.stdout.split()
    assert int(pid) != victim
    assert kept == "False"
    assert "variables were lost" in cell.stderr
    assert "SIGKILL" in cell.stderr


def test_cells_after_a_death_without_spare_keep_their_numbers(tmp_path: Path) -> None:
    """A cell that waits for a new worker keeps the number it was announced with."""
    with running_kernel(tmp_path / "ipython", ["--SessionPool.spares=0"]) as kernel:
        assert kernel.run("1").execution_count == 1
        crash = kernel.run(EXIT_3)
        _assert_worker_died(crash, "exited with code 3")
        assert crash.execution_count == 2

        # No spare: this cell waits for a new worker to start.
        waiting = kernel.run("'waited'")
        following = kernel.run("'next'")

        assert waiting.status == "ok", waiting.reply
        announced = [input_count(waiting), input_count(following)]
        replied = [waiting.execution_count, following.execution_count]
        assert announced == [3, 4]
        assert replied == announced, "execute_reply numbers differ from execute_input"


# Not strict: the race is hit on some rounds only, so a lucky run passes.
def test_cell_sent_as_idle_worker_dies_is_answered(tmp_path: Path) -> None:
    """A cell that reaches the kernel as it notices a death still gets a reply."""
    rounds = 8
    with running_kernel(tmp_path / "ipython") as kernel:
        for _ in range(rounds):
            victim = kernel.worker_pid()
            os.kill(victim, signal.SIGKILL)
            cell = kernel.driver.submit("print('still here')")
            try:
                kernel.driver.wait(cell, timeout=DEATH_REPLY_S)
            except KernelTimeoutError as exc:
                pytest.fail(f"a cell sent just after an idle worker died hung: {exc}")
            assert cell.ename in (None, "WorkerDied"), cell.reply


def test_crash_loop_gives_up_with_reason_and_kernel_lives(tmp_path: Path) -> None:
    """Workers that die while warming up make the first cell fail, not spin."""
    options = ["--SessionPool.warmup_code=import os; os._exit(7)"]
    with running_kernel(tmp_path / "ipython", options) as kernel:
        seen: set[int] = set()

        def run_sampling(code: str) -> Execution:
            cell = kernel.driver.submit(code)
            deadline = cell.sent_at + CRASH_LOOP_REPLY_S
            while cell.reply is None and time.monotonic() < deadline:
                seen.update(kernel.worker_pids())
                kernel.driver.settle(SAMPLE_S)
            return kernel.driver.wait(cell, timeout=CRASH_LOOP_REPLY_S)

        first = run_sampling("print('never runs')")

        assert first.status == "error", first.reply
        assert first.ename == "WorkerStartError"
        text = _error_text(first)
        assert "gave up" in text.lower(), text
        assert "exited with code 7" in text, text
        assert first.errors and first.errors[-1]["ename"] == "WorkerStartError"
        assert first.execution_count == 1
        assert len(seen) <= START_ATTEMPTS, f"started {sorted(seen)}"

        # Having given up, the kernel starts nothing until it is asked again.
        after_giving_up = set(seen)
        end = time.monotonic() + QUIET_WATCH_S
        while time.monotonic() < end:
            seen.update(kernel.worker_pids())
            kernel.driver.settle(SAMPLE_S)
        assert seen == after_giving_up, (
            f"new workers while idle: {seen - after_giving_up}"
        )
        assert kernel.manager.is_alive()
        assert kernel.driver.kernel_info() is not None

        second = run_sampling("print('still never runs')")

        assert second.ename == "WorkerStartError", second.reply
        assert len(seen - after_giving_up) <= START_ATTEMPTS
        assert kernel.driver.kernel_info() is not None
