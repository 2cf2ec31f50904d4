"""Interrupts against real kernels: whatever the cell does, the reply comes.

`test_cases_interrupt.py` already covers `time.sleep`, `Popen.wait`,
`Thread.join`, a print flood, a caught interrupt and an idle interrupt; this
module covers the other blocking calls, the kernel ending a cell stuck in C,
escalation and its grace period, queued cells, SIGINT to the kernel process,
output parenting and the metrics counters.

Timing decides whether a reply carries the worker's traceback or the kernel's
short one, so tests accept both: ename `KeyboardInterrupt` and a non-empty
traceback. Bounds are generous for a loaded two-core machine; the 50 ms
promise is measured by the benchmarks, not here. An acknowledged interrupt's
reply waits for IPython to format the traceback, and a fresh worker's first
traceback through library frames (subprocess, asyncio) took 1-2.7 s here, so
a case whose reply time is measured is interrupted once unmeasured first.

Interrupts go out on the test client's own control channel, so the
interrupt_reply is seen and every msg_id comes from one counter:
`KernelManager.interrupt_kernel` signs with a second `Session` that shares
the client's session id, so its msg_ids repeat the client's and the driver
files the interrupt's busy/idle under an unrelated request. Cells announce
that they are about to block with a plain print (no flush=True, except
before a GIL-holding C call), so the interrupt lands in the blocking call, not
in the worker's output code; the interrupt that does land there has a test of
its own.
"""

from __future__ import annotations

import os
import queue
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kernel_driver import Execution, KernelDriver, KernelTimeoutError

REPLY_BOUND = 2.0  # s from an interrupt to its execute_reply (target: 50 ms)
WARM_UP_BOUND = 10.0  # s for an unmeasured first interrupt (cold traceback formatting)
CONTROL_REPLY_BOUND = 1.0  # s from interrupt_request to interrupt_reply
MARK_TIMEOUT = 20.0  # s for a cell to print the line saying it is about to block
CHILD_EXIT_TIMEOUT = 5.0  # s for a child of an interrupted cell to be gone
# A C call that holds the GIL and never checks for signals: hours of work.
ENDLESS_C_CALL = "sum(range(10**12))"
# A C call that ends by itself after roughly 1-4 s on the loaded test machine.
FINITE_C_CALL = "sum(range(10**8))"

REMEMBER_WORKER = """\
import os
base = 41
print(os.getpid())
"""

SHOW_WORKER = """\
import os
print(os.getpid())
print('base' in globals() and base + 1)
"""

PURE_PYTHON_LOOP = """\
print('about to block')
spins = 0
while True:
    spins += 1
"""

SOCKET_READ = """\
import socket
a, b = socket.socketpair()
print('about to block')
a.recv(10)
"""

TOP_LEVEL_AWAIT = """\
import asyncio
print('about to block')
await asyncio.sleep(60)
"""

SLEEP_60 = """\
import time
print('about to block')
time.sleep(60)
"""

# The shell writes its pid (that of `sleep`, after exec) into a FIFO the test
# reads, so the test knows the child without scanning the process table.
CHILD_RUN = """\
import subprocess
print('about to block')
subprocess.run(['sh', '-c', 'echo $$ > "$0"; exec sleep 61.25', {fifo!r}])
print('child finished')
"""

# A cell in C holds the GIL, so the worker's I/O thread could not send a
# plain print's text: the flush waits until the kernel has it. The tests wait
# half a second after the marker, so the interrupt lands in the C call.
STUCK_IN_C = f"""\
print('about to block', flush=True)
total = {ENDLESS_C_CALL}
"""

BRIEFLY_IN_C = f"""\
print('about to block', flush=True)
total = {FINITE_C_CALL}
print('sum done')
"""

SLOW_CLEANUP = """\
import os, time
worker_pid = os.getpid()
print('about to block')
try:
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(2.0)
    print('cleaned up')
kept = 'yes'
"""

STUBBORN_LOOP = """\
import time
caught = 0
print('about to block')
while True:
    try:
        time.sleep(0.05)
    except KeyboardInterrupt:
        caught += 1
        print('caught', caught)
"""

# Mostly asleep, so the interrupt lands in time.sleep (see FLUSH_LOOP for one
# that lands in the output code), yet thousands of lines are in flight.
PRINT_LOOP = """\
import time
line = 0
while True:
    print('first-cell-line', line)
    line += 1
    time.sleep(0.0005)
"""

FLUSH_LOOP = """\
import sys
print('about to block')
while True:
    sys.stdout.flush()
"""


def _worker_pid(driver: KernelDriver) -> int:
    """Define `base = 41` in the worker and return the worker's pid."""
    cell = driver.execute(REMEMBER_WORKER)
    assert cell.status == "ok", cell.reply
    return int(cell.stdout.split()[0])


def _show_worker(
    driver: KernelDriver, timeout: float = 30.0
) -> tuple[int, str, Execution]:
    """The worker's pid now and `base + 1` ("False" if `base` is gone)."""
    cell = driver.execute(SHOW_WORKER, timeout=timeout)
    assert cell.status == "ok", cell.reply
    pid, kept = cell.stdout.split()
    return int(pid), kept, cell


def _start(driver: KernelDriver, code: str, **options: Any) -> Execution:
    """Submit `code` and return once it printed that it is about to block."""
    cell = driver.submit(code, **options)
    started = driver.wait_until(lambda: "about to block" in cell.stdout, MARK_TIMEOUT)
    assert started, f"the cell never started: {cell.reply}"
    return cell


def _interrupt(driver: KernelDriver, cell: Execution | None = None) -> float:
    """Send interrupt_request on the control channel; seconds until its reply.

    The send time is noted in `cell.interrupted_at`. Raises if no
    interrupt_reply (status ok) comes within 10 s.
    """
    client = driver.client
    request = client.session.msg("interrupt_request", {})
    sent_at = time.monotonic()
    client.control_channel.send(request)
    if cell is not None:
        cell.interrupted_at.append(sent_at)
    deadline = sent_at + 10.0
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            reply = client.control_channel.get_msg(timeout=remaining)
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            assert reply["header"]["msg_type"] == "interrupt_reply", reply
            assert reply["content"].get("status") == "ok", reply["content"]
            return time.monotonic() - sent_at
    pytest.fail("no interrupt_reply within 10 s")


def _interrupt_unmeasured(driver: KernelDriver, code: str) -> None:
    """Run and interrupt `code` once so its traceback's sources are parsed."""
    cell = _start(driver, code)
    _interrupt(driver, cell)
    driver.wait(cell, timeout=30)
    _assert_interrupted(cell, within=WARM_UP_BOUND)


def _assert_interrupted(cell: Execution, *, within: float = REPLY_BOUND) -> None:
    assert cell.status == "error", cell.reply
    assert cell.ename == "KeyboardInterrupt", cell.reply
    assert cell.has_traceback, cell.errors
    assert cell.seconds_after_interrupt <= within, cell.seconds_after_interrupt


def _stats(driver: KernelDriver) -> dict[str, int]:
    cell = driver.execute("%pyrepl3 stats", timeout=30)
    assert cell.status == "ok", cell.reply
    counters: dict[str, int] = {}
    for line in cell.stdout.splitlines():
        key, _, value = line.partition(": ")
        if value.strip().isdigit():
            counters[key.strip()] = int(value)
    return counters


def _kernel_pid(driver: KernelDriver) -> int:
    pid = getattr(driver.manager.provisioner, "pid", None)
    assert isinstance(pid, int), "the kernel was not started by a local provisioner"
    return pid


def _errors_read_since(driver: KernelDriver, start: int) -> list[dict[str, Any]]:
    return [m.content for _, m in driver.all_iopub[start:] if m.msg_type == "error"]


def _read_pid_from_fifo(fd: int, timeout: float) -> int:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(int(timeout * 1000)), "the child never reported its pid"
    return int(os.read(fd, 64).decode().split()[0])


def _exits_within(pidfd: int, timeout: float) -> bool:
    """True once the process behind `pidfd` has exited (a zombie counts)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


@pytest.mark.parametrize(
    "code",
    [PURE_PYTHON_LOOP, SOCKET_READ, TOP_LEVEL_AWAIT],
    ids=["pure-python-loop", "socket-recv", "top-level-await"],
)
def test_interrupt_stops_blocking_cell_and_keeps_worker(
    driver: KernelDriver, code: str
) -> None:
    """Loops, socket reads and awaits end with KeyboardInterrupt; the worker stays."""
    pid = _worker_pid(driver)
    _interrupt_unmeasured(driver, code)
    cell = _start(driver, code)

    _interrupt(driver, cell)
    driver.wait(cell, timeout=30)

    _assert_interrupted(cell)
    assert _show_worker(driver)[:2] == (pid, "42")
    driver.assert_next_cell_works()


def test_interrupt_stops_subprocess_run_and_its_child(
    driver: KernelDriver, tmp_path: Path
) -> None:
    """subprocess.run(['sleep', ...]) ends promptly and the child is gone too."""
    _interrupt_unmeasured(driver, CHILD_RUN.format(fifo="/dev/null"))
    fifo = tmp_path / "child-pid"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        cell = _start(driver, CHILD_RUN.format(fifo=str(fifo)))
        child = os.pidfd_open(_read_pid_from_fifo(reader, MARK_TIMEOUT))
    finally:
        os.close(reader)
    try:
        _interrupt(driver, cell)
        driver.wait(cell, timeout=30)

        _assert_interrupted(cell)
        assert "child finished" not in cell.stdout
        assert _exits_within(child, CHILD_EXIT_TIMEOUT), "the sleep child survived"
    finally:
        if not _exits_within(child, 0):
            signal.pidfd_send_signal(child, signal.SIGKILL)
        os.close(child)
    driver.assert_next_cell_works()


def test_interrupt_of_gil_holding_c_call_is_answered_then_worker_replaced(
    driver: KernelDriver,
) -> None:
    """The kernel ends a cell stuck in C; after the grace a new worker serves."""
    pid = _worker_pid(driver)
    cell = _start(driver, STUCK_IN_C)
    driver.settle(0.5)  # let the sum start: the print above returns first

    _interrupt(driver, cell)
    driver.wait(cell, timeout=30)

    _assert_interrupted(cell)
    new_pid, kept, after = _show_worker(driver, timeout=30)
    assert new_pid != pid
    assert kept == "False"
    assert "SessionPool.interrupt_grace" in after.stderr
    assert "lost" in after.stderr
    driver.assert_next_cell_works()


def test_interrupt_reply_comes_at_once_while_busy(driver: KernelDriver) -> None:
    """interrupt_reply on control answers at once; the cell then ends interrupted."""
    cell = _start(driver, SLEEP_60)

    seconds = _interrupt(driver, cell)
    driver.wait(cell, timeout=30)

    assert seconds <= CONTROL_REPLY_BOUND
    _assert_interrupted(cell)


def test_interrupt_reply_comes_at_once_while_idle_and_changes_nothing(
    driver: KernelDriver,
) -> None:
    """An idle interrupt is answered, raises nowhere and keeps the worker."""
    pid = _worker_pid(driver)
    seen = len(driver.all_iopub)

    seconds = _interrupt(driver)
    driver.settle(1.0)

    assert seconds <= CONTROL_REPLY_BOUND
    assert _errors_read_since(driver, seen) == []
    new_pid, kept, after = _show_worker(driver)
    assert (new_pid, kept) == (pid, "42")
    assert after.errors == []
    assert "KeyboardInterrupt" not in after.output_text()


def test_interrupt_aborts_queued_cells_when_stop_on_error(driver: KernelDriver) -> None:
    """Cells queued behind an interrupted one are aborted (stop_on_error true)."""
    first = _start(driver, SLEEP_60, stop_on_error=True)
    queued = [driver.submit(f"print('queued {n} ran')") for n in (1, 2)]

    _interrupt(driver, first)
    driver.wait(first, timeout=30)
    for cell in queued:
        driver.wait(cell, timeout=30)

    _assert_interrupted(first)
    assert [cell.status for cell in queued] == ["aborted", "aborted"]
    assert "queued" not in driver.all_stdout
    driver.assert_next_cell_works()


def test_interrupt_lets_queued_cells_run_without_stop_on_error(
    driver: KernelDriver,
) -> None:
    """With stop_on_error false, the cells queued behind run normally."""
    first = _start(driver, SLEEP_60, stop_on_error=False)
    queued = [driver.submit(f"print('queued {n} ran')") for n in (1, 2)]

    _interrupt(driver, first)
    driver.wait(first, timeout=30)
    for cell in queued:
        driver.wait(cell, timeout=30)

    _assert_interrupted(first)
    assert [cell.status for cell in queued] == ["ok", "ok"]
    assert [cell.stdout for cell in queued] == ["queued 1 ran\n", "queued 2 ran\n"]


@pytest.mark.parametrize(
    "kernel_manager", [["--SessionPool.interrupt_grace=1"]], indirect=True
)
def test_acknowledged_interrupt_never_kills_worker_with_slow_cleanup(
    driver: KernelDriver,
) -> None:
    """A handler that cleans up for longer than the grace keeps its worker."""
    cell = _start(driver, SLOW_CLEANUP)

    _interrupt(driver, cell)
    driver.wait(cell, timeout=30)
    cleaned = driver.wait_until(lambda: "cleaned up" in cell.stdout, 10.0)

    assert cleaned, "the handler's output never came"
    if cell.status == "ok":
        assert 1.5 <= cell.seconds_after_interrupt <= 2.0 + REPLY_BOUND
    else:
        # The acknowledgement missed the kernel's window on a loaded machine,
        # so the kernel answered for the cell; the worker must still survive.
        _assert_interrupted(cell)
    after = driver.execute("import os\nprint(os.getpid() == worker_pid, kept)")
    assert after.status == "ok", after.reply
    assert after.stdout == "True yes\n"
    assert "SessionPool.interrupt_grace" not in after.stderr


@pytest.mark.parametrize(
    "kernel_manager", [["--SessionPool.interrupt_grace=1"]], indirect=True
)
def test_second_interrupt_after_grace_replaces_stubborn_worker(
    driver: KernelDriver,
) -> None:
    """A cell that swallows interrupts is killed on the second one past the grace."""
    pid = _worker_pid(driver)
    cell = _start(driver, STUBBORN_LOOP)

    _interrupt(driver, cell)
    caught = driver.wait_until(lambda: "caught 1" in cell.stdout, 10.0)
    assert caught, "the first interrupt never reached user code"
    driver.settle(max(0.0, cell.interrupted_at[0] + 1.5 - time.monotonic()))
    # On a loaded machine the first acknowledgement can miss the kernel's
    # window; then the cell was answered already and only the kill remains.
    answered_early = cell.reply is not None
    _interrupt(driver, cell)
    driver.wait(cell, timeout=30)

    assert cell.status == "error", cell.reply
    assert cell.ename == "KeyboardInterrupt", cell.reply
    assert cell.has_traceback
    assert cell.reply_at is not None
    if not answered_early:
        assert cell.reply_at - cell.interrupted_at[1] <= REPLY_BOUND
    new_pid, kept, after = _show_worker(driver, timeout=30)
    assert new_pid != pid
    assert kept == "False"
    told = cell.stderr + after.stderr
    assert "SessionPool.interrupt_grace" in told, (cell.stderr, after.stderr)
    assert "lost" in told
    driver.assert_next_cell_works()


@pytest.mark.parametrize(
    "kernel_manager", [["--SessionPool.interrupt_grace=0"]], indirect=True
)
def test_zero_grace_lets_uninterruptible_c_call_finish_in_same_worker(
    driver: KernelDriver,
) -> None:
    """interrupt_grace=0 never kills: the C call ends by itself, state is kept."""
    pid = _worker_pid(driver)
    cell = _start(driver, BRIEFLY_IN_C)
    driver.settle(0.5)  # let the sum start: the print above returns first

    _interrupt(driver, cell)
    driver.settle(0.3)
    _interrupt(driver, cell)
    driver.wait(cell, timeout=30)

    _assert_interrupted(cell)
    assert _show_worker(driver, timeout=60)[:2] == (pid, "42")
    driver.assert_next_cell_works()


def test_sigint_to_kernel_process_interrupts_cell_and_kernel_survives(
    driver: KernelDriver,
) -> None:
    """SIGINT sent to the kernel process itself acts as an interrupt request."""
    kernel_pid = _kernel_pid(driver)
    pid = _worker_pid(driver)
    cell = _start(driver, SLEEP_60)

    cell.interrupted_at.append(time.monotonic())
    os.kill(kernel_pid, signal.SIGINT)
    driver.wait(cell, timeout=30)

    _assert_interrupted(cell)
    driver.assert_alive()
    assert _show_worker(driver)[:2] == (pid, "42")


def test_sigint_to_idle_kernel_process_is_harmless(driver: KernelDriver) -> None:
    """SIGINT to an idle kernel kills nothing and raises nowhere."""
    kernel_pid = _kernel_pid(driver)
    pid = _worker_pid(driver)
    seen = len(driver.all_iopub)

    os.kill(kernel_pid, signal.SIGINT)
    driver.settle(1.0)

    driver.assert_alive()
    assert _errors_read_since(driver, seen) == []
    new_pid, kept, after = _show_worker(driver)
    assert (new_pid, kept) == (pid, "42")
    assert after.errors == []


def test_output_of_interrupted_cell_never_lands_in_next_cell(
    driver: KernelDriver,
) -> None:
    """Late text of an interrupted print loop keeps its own cell as parent."""
    flood = driver.submit(PRINT_LOOP)
    flowing = driver.wait_until(lambda: "first-cell-line" in flood.stdout, MARK_TIMEOUT)
    assert flowing, "the print loop never printed"

    _interrupt(driver, flood)
    driver.wait(flood, timeout=30)
    second = driver.execute("print('second-cell-marker')", linger=1.0)

    _assert_interrupted(flood, within=2 * REPLY_BOUND)
    assert second.status == "ok"
    assert second.stdout == "second-cell-marker\n"
    parented = [m for parent, m in driver.all_iopub if parent == second.msg_id]
    leaked = [m for m in parented if "first-cell-line" in str(m.content)]
    assert leaked == []


def test_interrupt_landing_in_output_code_is_always_answered(
    driver: KernelDriver,
) -> None:
    """A SIGINT that hits the worker while it flushes output still ends the cell.

    One acknowledged interrupt must be enough, so the rounds send one each.
    Every round lands in the stream's flush; about one in eight lands in the
    few instructions between taking the output lock and entering its `with`.
    """
    for round_number in range(20):
        cell = _start(driver, FLUSH_LOOP)
        _interrupt(driver, cell)
        try:
            driver.wait(cell, timeout=8)
        except KernelTimeoutError:
            pytest.fail(
                f"round {round_number}: no execute_reply 8 s after one interrupt;"
                " the worker is wedged in its output code"
            )
        _assert_interrupted(cell)
    driver.assert_next_cell_works()


@pytest.mark.parametrize(
    "kernel_manager",
    [["--SessionPool.metrics=True", "--SessionPool.interrupt_grace=1"]],
    indirect=True,
)
def test_metrics_count_cancel_triggers_cancellations_and_escalations(
    driver: KernelDriver,
) -> None:
    """%pyrepl3 stats shows the interrupt counters when metrics are on."""
    sleeper = _start(driver, SLEEP_60)
    _interrupt(driver, sleeper)
    driver.wait(sleeper, timeout=30)
    _assert_interrupted(sleeper)

    after_sleep = _stats(driver)

    assert after_sleep.get("cancel_event_triggers", 0) >= 1, after_sleep
    stuck = _start(driver, STUCK_IN_C)
    driver.settle(0.5)  # let the sum start: the print above returns first
    _interrupt(driver, stuck)
    driver.wait(stuck, timeout=30)
    _assert_interrupted(stuck)

    after_c_call = _stats(driver)

    assert after_c_call.get("cancel_event_triggers", 0) >= 2, after_c_call
    assert after_c_call.get("executions_cancelled", 0) >= 1, after_c_call
    assert after_c_call.get("escalations", 0) >= 1, after_c_call
    assert after_c_call.get("replacements", 0) >= 1, after_c_call


THREAD_SIGNAL_MASKS = """\
import signal, threading
own = {'MainThread', 'pyrepl3-io', 'IPythonHistorySavingThread'}
for thread in (t for t in threading.enumerate() if t.name in own):
    with open(f'/proc/self/task/{thread.native_id}/status') as status:
        blocked = next(l for l in status if l.startswith('SigBlk:')).split()[1]
    print(thread.name, bool(int(blocked, 16) & (1 << (signal.SIGINT - 1))))
"""


def test_only_the_main_thread_of_a_worker_can_take_sigint(driver: KernelDriver) -> None:
    """The worker's own threads block SIGINT, so an interrupt always lands on the
    main thread, even while it sleeps in a system call such as recv()."""
    cell = driver.execute(THREAD_SIGNAL_MASKS)

    assert cell.status == "ok", cell.output_text()
    blocked = dict(line.split() for line in cell.stdout.splitlines())
    assert blocked.pop("MainThread") == "False"
    assert blocked == {"pyrepl3-io": "True", "IPythonHistorySavingThread": "True"}
