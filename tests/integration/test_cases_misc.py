"""Error reporting, asyncio, multiprocessing and execution bookkeeping."""

from __future__ import annotations

from kernel_driver import KernelDriver

SURROGATE_ERROR = """\
broken_half = chr(0xd83d)  # a lone high surrogate, as bad UTF-16 decoding leaves
raise ValueError('cannot parse: ' + broken_half)
"""

ASYNCIO_RUN = """\
import asyncio
async def compute():
    await asyncio.sleep(0.05)
    return 42
print('result', asyncio.run(compute()))
"""

TOP_LEVEL_AWAIT = """\
import asyncio
await asyncio.sleep(0.05)
values = await asyncio.gather(*(asyncio.sleep(0.01, result=n) for n in range(3)))
print(values)
"""

FORK_POOL = """\
import multiprocessing as mp
def square(n):
    return n * n
with mp.get_context('fork').Pool(2) as pool:
    print(pool.map(square, range(6)))
"""

FAILING_CELL = """\
import time
time.sleep(0.5)
raise ValueError('the first cell fails')
"""


def test_exception_text_with_lone_surrogate_is_reported(driver: KernelDriver) -> None:
    """A lone surrogate in an error message still yields that error (ipython#11615)."""
    cell = driver.execute(SURROGATE_ERROR, timeout=15)

    assert cell.status == "error"
    assert cell.ename == "ValueError"
    assert cell.has_traceback
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_asyncio_run_works_in_cell(driver: KernelDriver) -> None:
    """asyncio.run() in a cell behaves as in a script (qtconsole#377)."""
    cell = driver.execute(ASYNCIO_RUN)

    assert cell.status == "ok"
    assert "result 42" in cell.stdout


def test_top_level_await_and_gather_complete(driver: KernelDriver) -> None:
    """Top-level await, gather included, returns within 5 s (ipython#10390)."""
    cell = driver.execute(TOP_LEVEL_AWAIT)

    assert cell.status == "ok"
    assert cell.stdout == "[0, 1, 2]\n"
    assert cell.reply_seconds <= 5


def test_fork_pool_map_over_cell_function_returns(driver: KernelDriver) -> None:
    """A fork Pool.map over a function defined in the cell finishes (notebook#2080)."""
    cell = driver.execute(FORK_POOL, timeout=60)

    assert cell.status == "ok"
    assert "[0, 1, 4, 9, 16, 25]" in cell.stdout
    assert cell.reply_seconds <= 30
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_failing_cell_aborts_cells_queued_behind_it(driver: KernelDriver) -> None:
    """Queued cells after an error are aborted, later ones run (IRkernel#232)."""
    failing = driver.submit(FAILING_CELL)
    queued = [
        (marker, driver.submit(f"print({marker!r})"))
        for marker in ("second cell ran", "third cell ran")
    ]

    driver.wait(failing)
    assert failing.status == "error"
    assert failing.ename == "ValueError"
    for marker, cell in queued:
        driver.wait(cell)
        assert cell.status in ("aborted", "error")
        assert marker not in cell.stdout
    fresh = driver.execute("print('fresh cell ran')")
    assert fresh.status == "ok"
    assert "fresh cell ran" in fresh.stdout


def test_execution_count_counts_failures_but_not_silent_cells(
    driver: KernelDriver,
) -> None:
    """Errors and SyntaxErrors take a count, silent cells do not (ipython#1070)."""
    first = driver.execute("1 + 1")
    assert first.status == "ok"
    assert first.execution_count is not None

    division = driver.execute("1 / 0")
    assert division.status == "error"
    assert division.ename == "ZeroDivisionError"
    assert division.execution_count == first.execution_count + 1

    syntax = driver.execute("def broken(:\n    pass")
    assert syntax.status == "error"
    assert syntax.ename == "SyntaxError"
    assert division.execution_count is not None
    assert syntax.execution_count == division.execution_count + 1

    silent = driver.execute("silent_value = 5", silent=True)
    assert silent.status == "ok"
    assert not silent.has_output

    printed = driver.execute("print('four')")
    assert printed.status == "ok"
    assert syntax.execution_count is not None
    assert printed.execution_count == syntax.execution_count + 1


BACKGROUND_TASK = """\
import asyncio
async def tick():
    await asyncio.sleep(0.2)
    print('tick from the background')
task = asyncio.ensure_future(tick())
"""


def test_task_started_by_a_cell_runs_on_while_idle(driver: KernelDriver) -> None:
    """A cell's asyncio task goes on between cells, as in ipykernel (ipywidgets' async
    examples rely on it), and its output keeps the cell that started it."""
    started = driver.execute(BACKGROUND_TASK, linger=1.5)

    assert started.status == "ok"
    assert started.stdout == "tick from the background\n"
    assert started.has_output_after_idle
    later = driver.execute(
        "print(task.done(), asyncio.get_event_loop() is task.get_loop())\n"
        "print(asyncio.get_event_loop().run_until_complete(asyncio.sleep(0, 'sync')))"
    )
    assert later.status == "ok", later.output_text()
    assert later.stdout == "True True\nsync\n"


CREATE_TASK = """\
import asyncio
async def answer():
    await asyncio.sleep(0.05)
    return 42
task = asyncio.create_task(answer())
"""


def test_create_task_in_a_plain_cell_runs_on_the_cells_loop(
    driver: KernelDriver,
) -> None:
    """asyncio.create_task in a cell without await works, as in ipykernel."""
    created = driver.execute(CREATE_TASK)
    assert created.status == "ok", created.output_text()

    awaited = driver.execute("print(await task)")
    assert awaited.status == "ok", awaited.output_text()
    assert awaited.stdout == "42\n"


BLOCKING_TASK = """\
import asyncio, time
kept = 42
async def hog():
    await asyncio.sleep(0.2)
    print('hogging the loop', flush=True)
    time.sleep(60)  # blocks the loop the worker runs between cells
hog_task = asyncio.create_task(hog())
"""


def test_interrupt_frees_a_cell_queued_behind_a_blocking_task(
    driver: KernelDriver,
) -> None:
    """The interrupt lands in the background task; the cell runs, nothing is lost."""
    started = driver.execute(BLOCKING_TASK)
    assert started.status == "ok", started.output_text()

    hogging = driver.wait_until(lambda: "hogging" in started.stdout, 10.0)
    assert hogging, "the background task never started"
    cell = driver.execute("print('ran', kept)", interrupt_after=[0.5], timeout=30)

    assert cell.status == "ok", cell.output_text()
    assert cell.stdout == "ran 42\n"
    assert cell.reply_seconds < 10
    driver.assert_next_cell_works()
