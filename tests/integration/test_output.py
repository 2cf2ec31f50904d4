"""Output that is complete, ordered and fast, as a frontend receives it.

Each test drives a real kernel and judges only the messages it sends back:
which stream a source lands in, what any byte sequence turns into, the exact
order of streams, displays, results and the reply, and how floods are
coalesced, rate limited and (when asked) dropped. Bounds are generous: these
tests share two cores with other work.
"""

from __future__ import annotations

import os
import queue
import re
import time
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from kernel_driver import Execution, KernelDriver, visible_outputs

LATE_OUTPUT_WINDOW = 0.3  # seconds to keep reading after idle to catch late output
SLOW_CELL_TIMEOUT = 60.0  # seconds for the cells that move megabytes
MSG_RATE_LIMIT = 500.0  # OutputStage.msg_rate_limit's default, messages per second
MSG_BURST = 500.0  # messages the default bucket holds when full (one second's worth)
DATA_RATE_LIMIT = 1_000_000.0  # OutputStage.data_rate_limit's default, bytes per s
RATE_SLACK = 1.1  # factor for clock jitter between the kernel and this process

DROP_MODE = [
    "--OutputStage.drop_excess=True",
    "--OutputStage.data_rate_limit=20000",
    "--OutputStage.drop_backlog=20000",
]
SLOW_RATE = 200_000  # bytes per second for the rate-limit option test
SLOW_RATE_MODE = [f"--OutputStage.data_rate_limit={SLOW_RATE}"]

# 20000 lines of exactly 100 characters: two megabytes, printed as fast as
# Python can. Each line starts with its number so gaps and reordering show.
TWO_MEGABYTES_LINES = 20_000
TWO_MEGABYTES = """\
for i in range(20000):
    print(f'{i:07d}' + 'x' * 92)
"""
ONE_MEGABYTE = """\
for i in range(10000):
    print(f'{i:07d}' + 'y' * 92)
"""


def _numbered_lines(count: int, filler: str) -> str:
    return "".join(f"{i:07d}{filler * 92}\n" for i in range(count))


# (source, code, expected stdout, expected stderr): each runs as its own cell.
CAPTURE_SOURCES = [
    (
        "sys.stdout",
        "import sys\n_ = sys.stdout.write('python-out\\n')",
        "python-out\n",
        "",
    ),
    (
        "sys.stderr",
        "import sys\n_ = sys.stderr.write('python-err\\n')",
        "",
        "python-err\n",
    ),
    ("fd 1", "import os\n_ = os.write(1, b'fd-one\\n')", "fd-one\n", ""),
    ("fd 2", "import os\n_ = os.write(2, b'fd-two\\n')", "", "fd-two\n"),
    (
        "C printf",
        (
            "import ctypes\nlibc = ctypes.CDLL(None)\n"
            "_ = libc.printf(b'c-printf %d\\n', 42)\n_ = libc.fflush(None)"
        ),
        "c-printf 42\n",
        "",
    ),
    (
        "os.system",
        "import os\n_ = os.system('echo hi; echo err >&2')",
        "hi\n",
        "err\n",
    ),
    (
        "the logging module, unconfigured",
        "import logging\nlogging.warning('logged')",
        "",
        "WARNING:root:logged\n",
    ),
]

LIST_ROOT = "import subprocess\n_ = subprocess.run(['ls', '/'])"

FORKED_CHILDREN = """\
import multiprocessing, os

def speak(tag):
    print(f'child-print-{tag}', flush=True)
    os.write(2, f'child-fd2-{tag}\\n'.encode())
    return tag * 10

fork = multiprocessing.get_context('fork')
child = fork.Process(target=speak, args=(1,))
child.start()
child.join(20)
print('child-exit', child.exitcode)
with fork.Pool(2) as pool:
    print('pool-results', pool.map(speak, [2, 3]))
"""


# The child points fd 1 at a packet socket, where each write stays one packet,
# prints one line and reports the packets it sees on fd 2.
FORKED_PRINT_WRITES = """\
import multiprocessing, os, socket

def count_writes():
    inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.dup2(inner.fileno(), 1)
    print('one whole line', flush=True)
    outer.setblocking(False)
    packets = []
    while True:
        try:
            packets.append(outer.recv(4096))
        except BlockingIOError:
            break
    os.write(2, repr(packets).encode() + b'\\n')

child = multiprocessing.get_context('fork').Process(target=count_writes)
child.start()
child.join(20)
print('child-exit', child.exitcode)
"""


def test_each_capture_source_lands_in_its_own_stream(driver: KernelDriver) -> None:
    """Python streams, fds 1/2, C stdio and a shell land, exactly, as their stream."""
    for source, code, stdout, stderr in CAPTURE_SOURCES:
        cell = driver.execute(code, linger=LATE_OUTPUT_WINDOW)

        assert cell.status == "ok", f"{source}: {cell.reply}"
        assert (cell.stdout, cell.stderr) == (stdout, stderr), source
        assert not cell.has_output_after_idle, f"{source}: output after idle"


def test_uncaptured_subprocess_output_lands_in_stdout(driver: KernelDriver) -> None:
    """`subprocess.run(['ls', '/'])` shows the whole listing, on stdout only."""
    cell = driver.execute(LIST_ROOT, linger=LATE_OUTPUT_WINDOW)

    assert cell.status == "ok"
    expected = {name for name in os.listdir("/") if not name.startswith(".")}
    assert set(cell.stdout.splitlines()) == expected
    assert cell.stderr == ""
    assert not cell.has_output_after_idle


def test_forked_multiprocessing_children_print_into_the_cell(
    driver: KernelDriver,
) -> None:
    """A fork-context Process and Pool neither hang nor lose their output."""
    cell = driver.execute(FORKED_CHILDREN, timeout=40, linger=LATE_OUTPUT_WINDOW)

    assert cell.status == "ok", cell.output_text()
    assert "child-exit 0\n" in cell.stdout
    assert "pool-results [20, 30]\n" in cell.stdout
    for tag in (1, 2, 3):
        # Two pool children print at once; see the test on torn lines below.
        assert cell.stdout.count(f"child-print-{tag}") == 1
        assert f"child-fd2-{tag}\n" in cell.stderr
    assert not cell.has_output_after_idle
    driver.assert_next_cell_works()


def test_print_in_a_forked_child_reaches_fd1_in_one_write(
    driver: KernelDriver,
) -> None:
    """A line printed by a fork-context child is written whole, as Python would."""
    cell = driver.execute(FORKED_PRINT_WRITES, timeout=30)

    assert cell.status == "ok", cell.output_text()
    assert cell.stdout == "child-exit 0\n"
    assert cell.stderr == "[b'one whole line\\n']\n"


# (what, code, expected stdout): byte sequences written to fd 1 or printed.
ODD_BYTES = [
    (
        "invalid UTF-8",
        "import os\n_ = os.write(1, b'\\xff\\xfeabc\\n')",
        "\ufffd\ufffdabc\n",
    ),
    (
        "a character split over two writes",
        (
            "import os, time\ncode = '€'.encode()\n_ = os.write(1, code[:1])\n"
            "time.sleep(0.2)\n_ = os.write(1, code[1:] + b'\\n')"
        ),
        "€\n",
    ),
    ("NUL in print", "print('a\\x00b')", "a\x00b\n"),
    (
        "bytes to sys.stdout.buffer, one character split over two writes",
        (
            "import sys\ncode = '€'.encode()\n"
            "_ = sys.stdout.buffer.write(b'\\xffraw ' + code[:1])\n"
            "_ = sys.stdout.buffer.write(code[1:] + b'\\n')\nsys.stdout.buffer.flush()"
        ),
        "\ufffdraw €\n",
    ),
    ("NUL on fd 1", "import os\n_ = os.write(1, b'c\\x00d\\n')", "c\x00d\n"),
    (
        "half a character left in sys.stdout.buffer, then a print",
        "import sys\n_ = sys.stdout.buffer.write('€'.encode()[:2])\nprint('X')",
        "\ufffdX\n",
    ),
    (
        "half a character left in sys.stdout.buffer at the end of the cell",
        "import sys\n_ = sys.stdout.buffer.write(b'end ' + '€'.encode()[:2])",
        "end \ufffd",
    ),
]

FD_PROGRESS_BAR = """\
import os, time
for pct in range(0, 101, 25):
    _ = os.write(1, f'\\rcopying {pct:3d}%'.encode())
    time.sleep(0.02)
_ = os.write(1, b'\\n')
"""


def test_odd_bytes_on_stdout_arrive_decoded_and_whole(driver: KernelDriver) -> None:
    """Invalid and split UTF-8 and NUL bytes become text; nothing raises."""
    for what, code, stdout in ODD_BYTES:
        cell = driver.execute(code)

        assert cell.status == "ok", f"{what}: {cell.reply}"
        assert cell.stdout == stdout, what
        assert cell.stderr == "", what
    assert driver.undecodable == []
    driver.assert_next_cell_works()


def test_fd_progress_bar_renders_its_final_state(driver: KernelDriver) -> None:
    """`\\r` written to fd 1 survives the pipe and renders in place."""
    cell = driver.execute(FD_PROGRESS_BAR)

    assert cell.status == "ok"
    assert "\r" in cell.stdout
    assert cell.rendered_text("stdout") == "copying 100%\n"


def test_lone_surrogates_are_replaced_wherever_they_leave(
    driver: KernelDriver,
) -> None:
    """A lone surrogate in print, an error, display data or a prompt never breaks."""
    printed = driver.execute("print('a\\ud800b')")
    assert printed.status == "ok"
    assert printed.stdout == "a\ufffdb\n"

    raised = driver.execute("raise ValueError('bad \\udcff here')")
    assert raised.ename == "ValueError"
    assert raised.reply is not None
    assert raised.reply["evalue"] == "bad \ufffd here"
    assert [e["evalue"] for e in raised.errors] == ["bad \ufffd here"]
    assert "bad \ufffd here" in raised.errors[0]["traceback"][-1]

    shown = driver.execute("display({'text/plain': '\\ud800x'}, raw=True)")
    assert shown.status == "ok"
    assert [d["data"] for d in shown.displays] == [{"text/plain": "\ufffdx"}]

    asked = driver.execute("print(repr(input('pick \\ud800: ')))", stdin=["fine"])
    assert asked.status == "ok"
    assert [r["prompt"] for r in asked.input_requests] == ["pick \ufffd: "]
    assert asked.stdout == "'fine'\n"

    assert driver.undecodable == []
    driver.assert_next_cell_works()


def test_megabyte_single_lines_arrive_whole(driver: KernelDriver) -> None:
    """A 1 MB line, printed or written to fd 1, arrives complete and unchanged."""
    line = "x" * 1_000_000 + "\n"
    printed = driver.execute("print('x' * 1_000_000)", timeout=SLOW_CELL_TIMEOUT)
    assert printed.status == "ok"
    assert printed.stdout == line

    written = driver.execute(
        "import os\n_ = os.write(1, b'x' * 1_000_000 + b'\\n')",
        timeout=SLOW_CELL_TIMEOUT,
    )
    assert written.status == "ok"
    assert written.stdout == line
    driver.assert_next_cell_works()


def test_incomplete_utf8_at_cell_end_stays_in_its_cell(driver: KernelDriver) -> None:
    """A cell ending mid-character shows the replacement; the next cell is clean."""
    first = driver.execute("import os\n_ = os.write(1, b'abc\\xe2')")
    second = driver.execute("import os\n_ = os.write(1, b'next\\n')")

    assert first.stdout == "abc\ufffd"
    assert second.stdout == "next\n"


ORDERED_CELL = """\
import sys
from IPython.display import clear_output, display
print('out-1')
display('shown-2')
print('err-3', file=sys.stderr)
print('out-4')
clear_output(wait=True)
print('out-5')
'result-6'
"""
ORDERED_OUTPUTS = [
    ("stream", "stdout", "out-1\n"),
    ("display_data", None, "'shown-2'"),
    ("stream", "stderr", "err-3\n"),
    ("stream", "stdout", "out-4\n"),
    ("clear_output", None, True),
    ("stream", "stdout", "out-5\n"),
    ("execute_result", None, "'result-6'"),
]

BARRIER_CELL = """\
import ctypes, os
from IPython.display import display
libc = ctypes.CDLL(None)
_ = os.write(1, b'fd-before\\n')
_ = libc.printf(b'printf-before\\n')
_ = os.system('echo child-before')
display('the-display')
_ = os.write(1, b'fd-after\\n')
_ = libc.printf(b'printf-after\\n')
"""

DISPLAY_ID_CELL = """\
from IPython.display import clear_output, display
handle = display('v1', display_id='shared-id')
print('between')
display('v2', display_id='shared-id', update=True)
display('unrelated')
clear_output()
print('after-clear')
handle.update('v3')
"""
DISPLAY_ID_OUTPUTS = [
    ("display_data", "shared-id", "'v1'"),
    ("stream", "stdout", "between\n"),
    ("update_display_data", "shared-id", "'v2'"),
    ("display_data", None, "'unrelated'"),
    ("clear_output", None, False),
    ("stream", "stdout", "after-clear\n"),
    ("update_display_data", "shared-id", "'v3'"),
]

THREAD_LINES = 40  # lines the background thread prints, one every 50 ms
BACKGROUND_THREAD = """\
import threading, time
def tick():
    for i in range(40):
        print(f'tick-{i}')
        time.sleep(0.05)
threading.Thread(target=tick).start()
"""


def _summary(messages: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """(type, stream name or display id, text or wait flag) per output message.

    Consecutive text of one stream is joined first, as a frontend shows it, so
    the check does not depend on how text was cut into messages.
    """
    rows: list[tuple[Any, ...]] = []
    for msg_type, content in messages:
        if msg_type == "stream":
            name, text = content["name"], content["text"]
            if rows and rows[-1][:2] == ("stream", name):
                rows[-1] = ("stream", name, rows[-1][2] + text)
            else:
                rows.append(("stream", name, text))
        elif msg_type == "clear_output":
            rows.append((msg_type, None, content["wait"]))
        elif msg_type in ("display_data", "update_display_data", "execute_result"):
            display_id = content.get("transient", {}).get("display_id")
            rows.append((msg_type, display_id, content["data"]["text/plain"]))
    return rows


def _execute_with_headers(
    client: BlockingKernelClient, code: str, timeout: float = 30.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `code`; return its execute_reply and its IOPub messages up to idle.

    Whole messages are kept, headers included, so the kernel's own creation
    times can be compared across the shell and IOPub channels.
    """
    msg_id = client.execute(code)
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no reply and idle within {timeout:g}s: {code!r}")
        return left

    try:
        reply = client.get_shell_msg(timeout=remaining())
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = client.get_shell_msg(timeout=remaining())
        published = []
        while True:
            message = client.get_iopub_msg(timeout=remaining())
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            published.append(message)
            content = message["content"]
            if message["msg_type"] == "status" and content["execution_state"] == "idle":
                return reply, published
    except queue.Empty:
        raise AssertionError(
            f"no reply and idle within {timeout:g}s: {code!r}"
        ) from None


def test_outputs_result_and_reply_follow_program_order(
    kernel_client: BlockingKernelClient,
) -> None:
    """Prints, a display, clear_output and the result arrive as written; reply last."""
    reply, published = _execute_with_headers(kernel_client, ORDERED_CELL)

    assert reply["content"]["status"] == "ok"
    outputs = [m for m in published if m["msg_type"] not in ("status", "execute_input")]
    assert _summary([(m["msg_type"], m["content"]) for m in outputs]) == ORDERED_OUTPUTS
    assert published[-1]["content"]["execution_state"] == "idle"
    # The kernel stamps each header when it creates the message: the reply
    # must have been made after the last output of its cell was published.
    last_output_at = max(m["header"]["date"] for m in outputs)
    assert reply["header"]["date"] >= last_output_at


def test_fd_text_before_a_display_is_published_before_it(
    driver: KernelDriver,
) -> None:
    """The display barrier flushes C stdio and drains the pipes first."""
    cell = driver.execute(BARRIER_CELL, linger=LATE_OUTPUT_WINDOW)

    assert cell.status == "ok"
    types = cell.iopub_types
    assert types.count("display_data") == 1
    split = types.index("display_data")
    before = "".join(m.content.get("text", "") for m in cell.iopub[:split])
    after = "".join(m.content.get("text", "") for m in cell.iopub[split:])
    assert sorted(before.splitlines()) == ["child-before", "fd-before", "printf-before"]
    assert after.splitlines() == ["fd-after", "printf-after"]
    assert not cell.has_output_after_idle


def test_display_id_updates_and_clear_output_keep_order(driver: KernelDriver) -> None:
    """A display id survives updates; clear_output empties the cell at its place."""
    cell = driver.execute(DISPLAY_ID_CELL)

    assert cell.status == "ok"
    messages = [(m.msg_type, m.content) for m in cell.iopub]
    assert _summary(messages) == DISPLAY_ID_OUTPUTS
    shown = visible_outputs(cell.iopub)
    assert [(m.msg_type, m.content.get("text")) for m in shown] == [
        ("stream", "after-clear\n")
    ]


def test_thread_output_after_its_cell_keeps_that_cell_as_parent(
    driver: KernelDriver,
) -> None:
    """A thread still printing while the next cell runs never lands in that cell."""
    starter = driver.execute(BACKGROUND_THREAD)
    follower = driver.execute("import time\ntime.sleep(0.5)\nprint('second-cell')")

    def ticks_of(parent: str) -> list[str]:
        return [
            line
            for parent_id, m in driver.all_iopub
            if parent_id == parent and m.msg_type == "stream"
            for line in m.content["text"].splitlines()
            if line.startswith("tick-")
        ]

    assert driver.wait_until(lambda: len(ticks_of(starter.msg_id)) >= THREAD_LINES, 15)
    assert starter.status == follower.status == "ok"
    assert ticks_of(starter.msg_id) == [f"tick-{i}" for i in range(THREAD_LINES)]
    assert follower.stdout == "second-cell\n"
    assert follower.stderr == ""
    # The scenario really happened: some ticks arrived while the second cell ran.
    assert follower.reply_at is not None
    during = [
        m
        for parent_id, m in driver.all_iopub
        if parent_id == starter.msg_id
        and m.msg_type == "stream"
        and follower.sent_at < m.at < follower.reply_at
    ]
    assert during, "no tick arrived while the second cell ran"


FLOOD_LINES = 200_000
FLOOD_MARK_EVERY = 25_000  # a stderr line after every this many stdout lines
FLOOD = """\
import sys
for i in range(200000):
    print(i)
    if i % 25000 == 0:
        print(f'mark {i}', file=sys.stderr)
"""

ENDLESS_PRINT = """\
i = 0
while True:
    print(i)
    i += 1
"""

# KeyboardInterrupt raised at many points inside print: a helper thread sends
# SIGINT to the worker every few milliseconds for 1.5 s while the main thread
# prints, catches the interrupt and prints on. Each signal is a user's
# interrupt landing at a random point of a flood. Loops test the clock, not
# `Thread.is_alive()`, which an interrupt can make report a live thread dead.
POKE_SECONDS = 1.5  # how long the helper thread sends SIGINTs
SELF_INTERRUPTED_PRINTS = """\
import os, signal, threading, time

def poke(until):
    time.sleep(0.1)
    while time.monotonic() < until:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.003)

def flood_until(until):
    while time.monotonic() < until:
        try:
            while time.monotonic() < until:
                print('flood')
        except KeyboardInterrupt:
            pass

began = time.monotonic()
threading.Thread(target=poke, args=(began + 1.5,)).start()
flood_until(began + 1.7)
"""
WEDGE_TIMEOUT = 8.0  # seconds after sending by which the 1.7 s cell must be done


def _output_messages(cell: Execution) -> list[Any]:
    return [m for m in cell.iopub if m.msg_type in ("stream", "display_data")]


def test_flood_is_coalesced_complete_and_in_order(driver: KernelDriver) -> None:
    """200k prints with stderr marks: few messages, every line, exact order."""
    cell = driver.execute(FLOOD, timeout=SLOW_CELL_TIMEOUT)

    assert cell.status == "ok"
    assert len(cell.streams) < 2000
    expected: list[tuple[str, str]] = []
    for i in range(FLOOD_LINES):
        expected.append(("stdout", str(i)))
        if i % FLOOD_MARK_EVERY == 0:
            expected.append(("stderr", f"mark {i}"))
    # Joined per run of one stream first: a message may end mid-line.
    runs = _summary([(m.msg_type, m.content) for m in cell.iopub])
    lines = [(name, line) for _kind, name, text in runs for line in text.splitlines()]
    assert lines == expected
    driver.assert_next_cell_works()


def test_endless_print_stays_interruptible_and_rate_limited(
    driver: KernelDriver,
) -> None:
    """`while True: print(i)` ends soon after an interrupt, within the message rate."""
    cell = driver.execute(ENDLESS_PRINT, interrupt_after=[3.0], timeout=30)

    assert cell.ename == "KeyboardInterrupt"
    assert cell.seconds_after_interrupt < 5.0
    # The bucket starts full, so the bound is the rate over the run plus a burst.
    outputs = _output_messages(cell)
    assert len(outputs) <= MSG_RATE_LIMIT * cell.reply_seconds * RATE_SLACK + MSG_BURST
    published = sum(len(m.content.get("text", "")) for m in outputs)
    assert published <= DATA_RATE_LIMIT * (cell.reply_seconds * RATE_SLACK + 1)
    # What was published is every number from 0 on, in order, with no gap.
    numbers = cell.stdout.split("\n")[:-1]
    assert numbers, "the loop printed nothing before the interrupt"
    assert numbers == [str(i) for i in range(len(numbers))]
    driver.assert_next_cell_works()


def test_interrupt_landing_inside_print_never_wedges_the_worker(
    driver: KernelDriver,
) -> None:
    """Interrupts that hit print at any point leave the worker serving."""
    driver.execute("kept = 'namespace-kept'")
    cell = driver.submit(SELF_INTERRUPTED_PRINTS)

    finished = driver.wait_until(lambda: cell.reply is not None, WEDGE_TIMEOUT)
    if not finished:
        # A second interrupt makes the kernel replace the wedged worker, which
        # leaves a clean kernel for teardown.
        driver.interrupt()
        driver.interrupt()
        driver.wait(cell, timeout=WEDGE_TIMEOUT + 15)
    assert finished, "the worker wedged: no reply after interrupts inside print"
    # Only the interrupts themselves may escape; a lock misused on the way out
    # would show as another exception.
    assert cell.ename in (None, "KeyboardInterrupt"), cell.output_text()
    if cell.reply_seconds < POKE_SECONDS:
        # An interrupt escaped the cell's own handler and ended it early: let
        # the helper thread stop poking before the next cell runs.
        driver.settle(POKE_SECONDS)
    survivor = driver.execute("print(kept)")
    assert survivor.stdout == "namespace-kept\n"


@pytest.mark.parametrize("kernel_manager", [DROP_MODE], indirect=True, ids=["drop"])
def test_drop_mode_ends_fast_and_reports_what_it_dropped(
    driver: KernelDriver,
) -> None:
    """With drop_excess, 2 MB at 20 kB/s ends at once with an exact drop count."""
    cell = driver.execute(TWO_MEGABYTES, timeout=SLOW_CELL_TIMEOUT)

    assert cell.status == "ok"
    # Without dropping, 2 MB at 20 kB/s would take about 100 seconds.
    assert cell.reply_seconds < 20
    total = TWO_MEGABYTES_LINES * 100
    kept = len(cell.stdout)
    assert 0 < kept < total
    kept_numbers = [
        int(n) for n in re.findall(r"^(\d{7})x{92}$", cell.stdout, re.MULTILINE)
    ]
    assert kept_numbers == sorted(set(kept_numbers)), "kept lines out of order"
    notices = [line for line in cell.stderr.splitlines() if "drop" in line]
    assert len(notices) == 1, cell.stderr
    assert "OutputStage.drop_excess" in notices[0]
    assert str(total - kept) in re.findall(r"\d+", notices[0])
    driver.assert_next_cell_works()


def test_without_drop_mode_fast_output_is_complete(driver: KernelDriver) -> None:
    """By default 2 MB printed at full speed all arrive, within the byte rate."""
    cell = driver.execute(TWO_MEGABYTES, timeout=SLOW_CELL_TIMEOUT)

    assert cell.status == "ok"
    assert cell.stdout == _numbered_lines(TWO_MEGABYTES_LINES, "x")
    assert cell.stderr == ""
    published = sum(len(m.content.get("text", "")) for m in cell.iopub)
    assert published <= DATA_RATE_LIMIT * (cell.reply_seconds * RATE_SLACK + 1)


@pytest.mark.parametrize(
    "kernel_manager", [SLOW_RATE_MODE], indirect=True, ids=["200kBps"]
)
def test_data_rate_limit_option_slows_output_without_loss(
    driver: KernelDriver,
) -> None:
    """At 200 kB/s, 1 MB of prints takes seconds and arrives whole."""
    cell = driver.execute(ONE_MEGABYTE, timeout=SLOW_CELL_TIMEOUT)

    assert cell.status == "ok"
    assert cell.stdout == _numbered_lines(10_000, "y")
    # One second's burst, then 800 kB at 200 kB/s: about 4 s; ask for 3.
    assert cell.reply_seconds >= 3.0


INTERLEAVED_CELL = """\
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None)
for i in range(3):
    print('py', i)
    _ = os.write(1, b'fd %d\\n' % i)
    _ = libc.puts(b'c %d' % i)
_ = os.system('echo shell; echo shell-err >&2')
print('after shell')
_ = subprocess.run(['echo', 'child'])
print('after child', file=sys.stderr)
"""
INTERLEAVED_LINES = [
    *(("stdout", line) for i in range(3) for line in (f"py {i}", f"fd {i}", f"c {i}")),
    ("stdout", "shell"),
    ("stderr", "shell-err"),
    ("stdout", "after shell"),
    ("stdout", "child"),
    ("stderr", "after child"),
]


def test_fd_text_and_prints_of_one_thread_keep_program_order(
    driver: KernelDriver,
) -> None:
    """C stdio is line-buffered and each printed line first catches up the pipes."""
    cell = driver.execute(INTERLEAVED_CELL)

    assert cell.status == "ok", cell.output_text()
    assert cell.stream_lines() == INTERLEAVED_LINES
