"""Output capture, order, rendering and batching, as frontends receive it."""

from __future__ import annotations

from kernel_driver import KernelDriver

LATE_OUTPUT_WINDOW = 0.5  # seconds to keep reading after idle to catch late output

THREADS_WRITE = """\
import sys, threading
def write_lines(k):
    for j in range(20):
        sys.stdout.write(f'w{k}-{j}\\n')
writers = [threading.Thread(target=write_lines, args=(k,)) for k in range(3)]
for w in writers:
    w.start()
for w in writers:
    w.join()
"""

CHILD_PROCESSES_WRITE = """\
import os, subprocess
os.system('echo shell-out-marker')
os.system('echo shell-err-marker 1>&2')
subprocess.run(['echo', 'run-out-marker'])
"""

FILE_DESCRIPTORS_WRITE = """\
import ctypes, os
libc = ctypes.CDLL(None)
libc.puts(b'puts-marker')
libc.fflush(None)
os.write(1, b'fd1-marker\\n')
os.write(2, b'fd2-marker\\n')
"""

ALTERNATE_STREAMS = """\
import sys
print('err-1', file=sys.stderr)
print('out-2')
print('err-3', file=sys.stderr)
print('out-4')
"""

PROGRESS_BARS = """\
import sys, time
for pct in range(0, 101, 10):
    print(f'\\rprogress {pct:3d}%', end='', flush=True)
    filled = pct // 10
    sys.stderr.write('\\r[' + '#' * filled + ' ' * (10 - filled) + ']')
    sys.stderr.flush()
    time.sleep(0.03)
print()
sys.stderr.write('\\n')
"""

ANIMATION = """\
from IPython.display import clear_output
import time
for frame in range(5):
    clear_output(wait=True)
    print(f'frame {frame}')
    time.sleep(0.05)
"""

UNICODE_TEXT = "naïve café — 🎉🐍 中文"  # 18 code points, 4 of them outside the BMP

DISPLAY_THEN_UPDATE = """\
from IPython.display import display
handle = display('first value', display_id=True)
handle.update('second value')
"""


def test_thread_output_lands_complete_in_running_cell(driver: KernelDriver) -> None:
    """Lines printed by threads the cell joins all appear in it (jupyterlab#14925)."""
    cell = driver.execute(THREADS_WRITE, linger=LATE_OUTPUT_WINDOW)

    assert cell.status == "ok"
    assert len(cell.stdout.splitlines()) == 60
    for line in ("w0-0\n", "w1-19\n", "w2-19\n"):
        assert line in cell.stdout
    assert not cell.has_output_after_idle


def test_child_process_output_is_captured_before_idle(driver: KernelDriver) -> None:
    """os.system and subprocess output shows in the cell (jupyterlab#7365)."""
    cell = driver.execute(CHILD_PROCESSES_WRITE, linger=LATE_OUTPUT_WINDOW)

    assert cell.status == "ok"
    assert "shell-out-marker" in cell.stdout
    assert "run-out-marker" in cell.stdout
    assert "shell-err-marker" in cell.stderr
    assert not cell.has_output_after_idle


def test_c_level_fd_writes_are_captured_before_idle(driver: KernelDriver) -> None:
    """libc puts and os.write on fds 1/2 reach the cell (ipykernel#630)."""
    cell = driver.execute(FILE_DESCRIPTORS_WRITE, linger=LATE_OUTPUT_WINDOW)

    assert cell.status == "ok"
    assert "puts-marker" in cell.stdout
    assert "fd1-marker" in cell.stdout
    assert "fd2-marker" in cell.stderr
    assert not cell.has_output_after_idle


def test_stdout_and_stderr_keep_call_order(driver: KernelDriver) -> None:
    """Alternating stderr/stdout prints arrive in call order (ipykernel#280)."""
    cell = driver.execute(ALTERNATE_STREAMS)

    assert cell.status == "ok"
    expected = [
        ("stderr", "err-1"),
        ("stdout", "out-2"),
        ("stderr", "err-3"),
        ("stdout", "out-4"),
    ]
    wanted = {line for _name, line in expected}
    seen = [(name, line) for name, line in cell.stream_lines() if line in wanted]
    assert seen == expected


def test_text_without_trailing_newline_arrives_before_idle(
    driver: KernelDriver,
) -> None:
    """Unflushed text with no newline is delivered before idle (jupyterlab#629)."""
    cell = driver.execute(
        "import sys\nsys.stdout.write('no newline at the end')",
        linger=LATE_OUTPUT_WINDOW,
    )

    assert cell.status == "ok"
    assert cell.stdout == "no newline at the end"
    assert not cell.has_output_after_idle


def test_carriage_return_progress_renders_final_state(driver: KernelDriver) -> None:
    """\\r progress bars keep their \\r and render in place (tqdm#375)."""
    cell = driver.execute(PROGRESS_BARS)

    assert cell.status == "ok"
    assert cell.rendered_text("stdout") == "progress 100%\n"
    assert cell.rendered_text("stderr") == "[##########]\n"


def test_clear_output_wait_leaves_only_last_frame(driver: KernelDriver) -> None:
    """clear_output(wait=True) keeps wait=true; one frame stays (ipython#4229)."""
    cell = driver.execute(ANIMATION)

    assert cell.status == "ok"
    clears = [m for m in cell.iopub if m.msg_type == "clear_output"]
    assert any(m.content.get("wait") for m in clears)
    assert cell.rendered_text("stdout") == "frame 4\n"


def test_output_flood_is_batched_and_complete(driver: KernelDriver) -> None:
    """200k printed lines finish promptly in few messages (notebook#2951)."""
    cell = driver.execute("for i in range(200000):\n    print(i)", timeout=60)

    assert cell.status == "ok"
    assert cell.idle_seconds <= 30
    assert len(cell.streams) <= 2000
    assert cell.stdout.endswith("199999\n")
    driver.assert_alive()
    driver.assert_next_cell_works()


def test_unicode_and_emoji_round_trip_unchanged(driver: KernelDriver) -> None:
    """Non-ASCII text and emoji survive code and output (hass-pyscript-jupyter#10)."""
    cell = driver.execute(f"text = {UNICODE_TEXT!r}\nprint(text)\nprint(len(text))")

    assert cell.status == "ok"
    assert cell.stdout == f"{UNICODE_TEXT}\n18\n"


def test_warning_shows_on_every_run_and_deprecation_from_main(
    driver: KernelDriver,
) -> None:
    """A re-run cell warns again; __main__ DeprecationWarnings show (dask#4435)."""
    warn_code = "import warnings\nwarnings.warn('mind the input')"
    for _run in range(2):
        cell = driver.execute(warn_code)
        assert cell.status == "ok"
        assert "UserWarning: mind the input" in cell.stderr

    deprecated = driver.execute(
        "import warnings\nwarnings.warn('old call', DeprecationWarning)"
    )
    assert deprecated.status == "ok"
    assert "DeprecationWarning: old call" in deprecated.stderr


def test_display_update_in_same_cell_targets_its_display_id(
    driver: KernelDriver,
) -> None:
    """handle.update() sends update_display_data for that display (cocalc#7164)."""
    cell = driver.execute(DISPLAY_THEN_UPDATE)

    assert cell.status == "ok"
    assert "display_data" in cell.iopub_types
    assert "update_display_data" in cell.iopub_types
    assert driver.final_display_texts(cell) == ["'second value'"]
