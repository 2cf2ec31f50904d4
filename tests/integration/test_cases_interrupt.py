"""Interrupts sent through `KernelManager.interrupt_kernel` while cells run or idle.

Interrupt replies may come from user code (the worker's traceback) or from the
kernel ending the cell itself (a short traceback); both carry ename
`KeyboardInterrupt`, so the tests accept either.
"""

from __future__ import annotations

from kernel_driver import KernelDriver

LONG_SLEEP = """\
import time
time.sleep(30)
print('sleep over')
"""

TRAINING_LOOP = """\
import time
epochs = []
try:
    for epoch in range(300):
        time.sleep(0.1)
        epochs.append(epoch)
except KeyboardInterrupt:
    print('interrupted after some epochs:', len(epochs) > 0)
finally:
    print('finally block ran')
"""

ENDLESS_PRINT = """\
count = 0
while True:
    print('row', count)
    count += 1
"""

C_LEVEL_SUM = """\
big = sum(range(10**11))
print('summed', big)
"""

CHILD_WAIT = """\
import subprocess
sleeper = subprocess.Popen(['sleep', '53.375'])
sleeper.wait()
"""

COUNT_SLEEPERS = """\
import os, time
time.sleep(0.5)
survivors = []
for entry in os.listdir('/proc'):
    if not entry.isdigit():
        continue
    try:
        with open(f'/proc/{entry}/cmdline', 'rb') as handle:
            if b'53.375' in handle.read():
                survivors.append(entry)
    except OSError:
        pass
print('sleepers alive:', len(survivors))
"""

THREAD_JOIN = """\
import threading, time
def spin():
    for _ in range(600):
        time.sleep(0.1)
helper = threading.Thread(target=spin, daemon=True)
helper.start()
helper.join()
print('thread joined')
"""


def test_interrupt_in_time_sleep_raises_keyboardinterrupt_and_keeps_state(
    driver: KernelDriver,
) -> None:
    """An interrupt stops time.sleep within 3 s; globals survive (ipython#8563)."""
    assert driver.execute("base = 41").status == "ok"

    cell = driver.execute(LONG_SLEEP, interrupt_after=[1.0], timeout=35)

    assert cell.status == "error"
    assert cell.ename == "KeyboardInterrupt"
    assert cell.seconds_after_interrupt <= 3
    assert "sleep over" not in cell.stdout
    assert cell.has_traceback
    after = driver.execute("print(base + 1)")
    assert after.status == "ok"
    assert after.stdout == "42\n"
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_interrupt_caught_by_user_code_runs_handlers_and_ends_ok(
    driver: KernelDriver,
) -> None:
    """KeyboardInterrupt reaches user code so except/finally run (keras#122)."""
    cell = driver.execute(TRAINING_LOOP, interrupt_after=[1.5], timeout=40)

    assert cell.status == "ok"
    assert cell.seconds_after_interrupt <= 3
    assert "interrupted after some epochs: True" in cell.stdout
    assert "finally block ran" in cell.stdout
    after = driver.execute("print('kept', len(epochs) >= 5)")
    assert after.status == "ok"
    assert after.stdout == "kept True\n"
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_interrupt_stops_print_flood_with_coalesced_output(
    driver: KernelDriver,
) -> None:
    """A runaway print loop stays interruptible and is batched (notebook#2364)."""
    cell = driver.execute(ENDLESS_PRINT, interrupt_after=[2.0], timeout=30)

    assert cell.status == "error"
    assert cell.ename == "KeyboardInterrupt"
    assert cell.seconds_after_interrupt <= 5
    assert len(cell.streams) <= 1000
    assert "row " in cell.output_text()
    # The interrupt lands inside print: the user's frame is still the last.
    tracebacks = "\n".join("\n".join(e.get("traceback", [])) for e in cell.errors)
    assert "pyrepl3_kernel" not in tracebacks
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_interrupt_twice_ends_uninterruptible_c_loop(driver: KernelDriver) -> None:
    """A C loop that never checks signals ends after two interrupts (ipython#8563)."""
    cell = driver.execute(C_LEVEL_SUM, interrupt_after=[1.0, 3.0], timeout=30)

    assert cell.status == "error"
    assert cell.seconds_after_interrupt <= 10
    assert "summed" not in cell.stdout
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_interrupt_during_child_wait_stops_cell_and_child(
    driver: KernelDriver,
) -> None:
    """Interrupting Popen.wait() also ends the child process (ipython#3400)."""
    cell = driver.execute(CHILD_WAIT, interrupt_after=[1.0], timeout=30)

    assert cell.status == "error"
    assert cell.ename == "KeyboardInterrupt"
    assert cell.seconds_after_interrupt <= 3
    check = driver.execute(COUNT_SLEEPERS)
    assert check.status == "ok"
    assert "sleepers alive: 0" in check.stdout
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_interrupt_during_thread_join_stops_the_wait(driver: KernelDriver) -> None:
    """Interrupting a cell blocked in Thread.join() ends it promptly (netwulf#4)."""
    cell = driver.execute(THREAD_JOIN, interrupt_after=[1.0], timeout=30)

    assert cell.status == "error"
    assert cell.ename == "KeyboardInterrupt"
    assert cell.seconds_after_interrupt <= 3
    assert "thread joined" not in cell.stdout
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_interrupt_while_idle_leaks_nothing_into_next_cell(
    driver: KernelDriver,
) -> None:
    """An interrupt between cells keeps state and raises nowhere (ipython#472)."""
    assert driver.execute("x = 41").status == "ok"

    driver.interrupt()
    driver.settle(1.5)

    after = driver.execute("print(x + 1)")
    assert after.status == "ok"
    assert after.stdout == "42\n"
    driver.assert_alive()
    driver.assert_next_cell_works()
