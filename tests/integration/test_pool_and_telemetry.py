"""The session pool, its options, usage telemetry and process cleanup.

Real kernels through jupyter_client: how many worker processes the pool
keeps, how fast a warm spare takes over after a crash, the `%pyrepl3`
magics, `warmup_code`, `cell_timeout` and `memory_limit`, `usage_request` on
the control channel (also while a cell is busy), that neither a SIGKILL
of the kernel nor a shutdown_request leaves a process behind, and that an
idle kernel's process tree does not wake at all.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kernel_driver import Execution
from kernel_processes import (
    KernelUnderTest,
    input_count,
    is_gone,
    running_kernel,
    wait_until,
)

POOL_TIMEOUT = 30.0  # s: a spare warms in ~1 s; generous for a loaded two-core machine
TAKEOVER_REPLY_S = 5.0  # s: a cell after a crash, run by the warm spare (takes ~0.1 s)
BUSY_CONTROL_S = 1.0  # s: a control request must be answered while a cell runs
KERNEL_KILL_CLEANUP_S = 2.0  # s: workers and their children go ~at once with the kernel
SHUTDOWN_TIMEOUT = 10.0  # s: from shutdown_request to the last process gone
SPARE_WATCH_S = 2.0  # s: a kernel without spares is watched this long for a second
MEMORY_LIMIT = 600 * 10**6  # bytes: far below the 2 GB the test allocates
IDLE_SETTLE_S = 1.0  # s: after the last cell, for the worker's history write
IDLE_WATCH_S = 11.0  # s: longer than the 10 s period of ipykernel's IOPub timer

EXIT_3 = "import os\nos._exit(3)"
USAGE_KEYS = (
    "kernel_cpu",
    "kernel_memory",
    "cpu_count",
    "host_virtual_memory",
    "pid",
    "hostname",
)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelUnderTest]:
    """One kernel with the default pool (one warm spare)."""
    with running_kernel(tmp_path_factory.mktemp("ipython")) as started:
        yield started


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelUnderTest]:
    """One kernel with a one-second cell timeout and a worker memory limit."""
    options = [
        "--SessionPool.cell_timeout=1",
        f"--SessionPool.memory_limit={MEMORY_LIMIT}",
    ]
    with running_kernel(tmp_path_factory.mktemp("ipython"), options) as started:
        yield started


def _stats(kernel: KernelUnderTest) -> dict[str, int]:
    cell = kernel.run("%pyrepl3 stats")
    assert cell.status == "ok", cell.reply
    pairs = [line.split(":", 1) for line in cell.stdout.splitlines() if ":" in line]
    return {name.strip(): int(value) for name, value in pairs}


def _control_request(
    kernel: KernelUnderTest,
    msg_type: str,
    content: dict[str, Any],
    timeout: float = 10.0,
) -> tuple[dict[str, Any], float]:
    """Send a control request; return its reply's content and the seconds it took."""
    client = kernel.client
    message = client.session.msg(msg_type, content)
    sent_at = time.monotonic()
    client.control_channel.send(message)
    deadline = sent_at + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            reply = client.control_channel.get_msg(timeout=remaining)
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == message["header"]["msg_id"]:
            return reply["content"], time.monotonic() - sent_at
    raise AssertionError(f"no reply to {msg_type} within {timeout:g}s")


def _shell_request(
    kernel: KernelUnderTest, msg_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Read the shell reply to `msg_id` (no cell may be running)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            reply = kernel.client.get_shell_msg(timeout=remaining)
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == msg_id:
            content: dict[str, Any] = reply["content"]
            return content
    raise AssertionError(f"no shell reply to {msg_id} within {timeout:g}s")


def _named(processes: list[psutil.Process], name: str) -> list[psutil.Process]:
    found = []
    for process in processes:
        try:
            if process.name() == name:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _wait_until_running(kernel: KernelUnderTest, cell: Execution) -> None:
    """Read IOPub until `cell` was announced (execute_input), then a little longer."""
    wait_until(
        lambda: kernel.driver.settle(0.02) or "execute_input" in cell.iopub_types,
        POOL_TIMEOUT,
        "the cell to start",
        interval=0,
    )
    kernel.driver.settle(0.2)


def test_default_pool_runs_active_worker_and_one_warm_spare(
    kernel: KernelUnderTest,
) -> None:
    kernel.wait_for_full_pool(workers=2, timeout=POOL_TIMEOUT)

    assert len(kernel.workers()) == 2
    assert _stats(kernel)["spares_warm"] == 1


def test_spare_takes_over_after_crash_and_pool_refills(kernel: KernelUnderTest) -> None:
    kernel.wait_for_full_pool()
    replacements = _stats(kernel)["replacements"]
    dead = kernel.worker_pid()
    spares = kernel.worker_pids() - {dead}

    crash = kernel.run(EXIT_3)
    after = kernel.run("import os\nprint(os.getpid())")

    assert crash.ename == "WorkerDied", crash.reply
    assert after.status == "ok", after.reply
    assert after.reply_seconds < TAKEOVER_REPLY_S
    assert int(after.stdout) in spares, "the warm spare did not take over"
    wait_until(
        lambda: len(kernel.workers()) == 2 and dead not in kernel.worker_pids(),
        POOL_TIMEOUT,
        "the pool to refill to two workers",
    )
    assert _stats(kernel)["replacements"] == replacements + 1


def test_no_spares_keeps_a_single_worker(tmp_path: Path) -> None:
    with running_kernel(tmp_path / "ipython", ["--SessionPool.spares=0"]) as kernel:
        pid = kernel.worker_pid()  # the first worker is ready: spares would start now
        counts = set()
        end = time.monotonic() + SPARE_WATCH_S
        while time.monotonic() < end:
            counts.add(len(kernel.workers()))
            time.sleep(0.05)

        assert counts == {1}
        assert kernel.worker_pids() == {pid}
        assert _stats(kernel)["spares_warm"] == 0


def test_restart_magic_gives_fresh_worker_with_empty_namespace(
    kernel: KernelUnderTest,
) -> None:
    kernel.wait_for_full_pool()
    assert kernel.run("doomed = 'lost on restart'").status == "ok"
    before = kernel.worker_pid()

    restart = kernel.run("%pyrepl3 restart")
    after = kernel.run("import os\nprint(os.getpid())\nprint('doomed' in dir())")

    assert restart.status == "ok", restart.reply
    assert after.status == "ok", after.reply
    pid, kept = after.stdout.split()
    assert int(pid) != before
    assert kept == "False"
    assert "restart" in after.stderr.lower(), after.stderr
    assert after.execution_count == restart.execution_count + 1
    wait_until(
        lambda: before not in kernel.worker_pids(),
        POOL_TIMEOUT,
        f"the restarted worker {before} to exit",
    )


def test_stats_magic_prints_counters(kernel: KernelUnderTest) -> None:
    stats = _stats(kernel)

    assert {"replacements", "spares_warm"} <= stats.keys(), stats
    assert all(value >= 0 for value in stats.values())


def test_warmup_code_runs_before_first_cell_and_stays_hidden(tmp_path: Path) -> None:
    options = ["--SessionPool.warmup_code=import json; WARM=1"]
    with running_kernel(tmp_path / "ipython", options) as kernel:
        first = kernel.run("print(WARM)")
        history_id = kernel.client.history(
            hist_access_type="tail", n=20, raw=True, output=False
        )
        history = _shell_request(kernel, history_id)

        assert first.status == "ok", first.reply
        assert first.stdout == "1\n"
        assert first.execution_count == input_count(first) == 1
        entries = [entry[2] for entry in history["history"]]
        assert "print(WARM)" in entries
        assert not any("WARM=1" in entry for entry in entries), entries
        ours = {first.msg_id}
        stray = [
            (parent, message.msg_type)
            for parent, message in kernel.driver.all_iopub
            if message.msg_type in ("stream", "display_data", "execute_result", "error")
            and parent not in ours
        ]
        assert stray == []


def test_adopted_worker_keeps_in_list_in_step(kernel: KernelUnderTest) -> None:
    """`In` lists the cells of this worker, as in any IPython shell."""
    first = kernel.run("'first input'")

    listed = kernel.run("print(In[-2:])")

    assert first.status == "ok", first.reply
    assert listed.stdout == "[\"'first input'\", 'print(In[-2:])']\n"


def test_cell_timeout_interrupts_a_long_cell(limited: KernelUnderTest) -> None:
    before = limited.worker_pid()

    cell = limited.run("import time\ntime.sleep(30)")

    assert cell.status == "error", cell.reply
    assert cell.ename == "KeyboardInterrupt"
    assert 0.9 < cell.reply_seconds < 10
    assert limited.worker_pid() == before, (
        "a timed-out cell that stopped costs no worker"
    )


def test_memory_limit_turns_huge_allocation_into_memoryerror(
    limited: KernelUnderTest,
) -> None:
    before = limited.worker_pid()

    cell = limited.run("blob = bytearray(2 * 10**9)")

    assert cell.status == "error", cell.reply
    assert cell.ename == "MemoryError"
    after = limited.run("small = bytearray(10**6)\nprint(len(small))")
    assert after.stdout == "1000000\n"
    assert limited.worker_pid() == before


def test_usage_request_counts_the_whole_process_tree(kernel: KernelUnderTest) -> None:
    kernel.wait_for_full_pool()

    usage, _ = _control_request(kernel, "usage_request", {})

    assert set(USAGE_KEYS) <= usage.keys(), usage
    assert usage["pid"] == kernel.process.pid
    assert usage["hostname"] == socket.gethostname()
    assert usage["cpu_count"] == psutil.cpu_count()
    assert usage["host_virtual_memory"]["total"] > 0
    kernel_alone = kernel.process.memory_full_info().pss
    smallest_worker = min(w.memory_full_info().pss for w in kernel.workers())
    # PSS moves a little between two readings; half a worker is far above that.
    assert usage["kernel_memory"] > kernel_alone + smallest_worker / 2


def test_usage_request_is_answered_while_a_cell_runs(kernel: KernelUnderTest) -> None:
    cell = kernel.driver.submit("import time\ntime.sleep(5)")
    _wait_until_running(kernel, cell)

    usage, seconds = _control_request(kernel, "usage_request", {})

    assert seconds < BUSY_CONTROL_S
    assert cell.reply is None, "the cell ended before the usage request was answered"
    assert set(USAGE_KEYS) <= usage.keys(), usage
    kernel.driver.interrupt()
    kernel.driver.wait(cell, timeout=POOL_TIMEOUT)
    assert cell.ename == "KeyboardInterrupt"


def test_kernel_sigkill_takes_workers_and_their_children(tmp_path: Path) -> None:
    with running_kernel(tmp_path / "ipython") as kernel:
        kernel.wait_for_full_pool()
        cell = kernel.driver.submit(
            "import subprocess\np = subprocess.Popen(['sleep', '300'])\np.wait()"
        )
        wait_until(
            lambda: bool(_named(kernel.tree(), "sleep")), POOL_TIMEOUT, "sleep to start"
        )
        descendants = kernel.tree()[1:]
        assert len(kernel.workers()) == 2
        assert cell.reply is None

        kernel.process.kill()
        seconds = wait_until(
            lambda: all(is_gone(p) for p in descendants),
            5.0,
            f"workers and sleep to go: {[p.pid for p in descendants]}",
            interval=0.01,
        )

        assert seconds < KERNEL_KILL_CLEANUP_S


def test_shutdown_request_leaves_no_process_behind(tmp_path: Path) -> None:
    with running_kernel(tmp_path / "ipython") as kernel:
        kernel.wait_for_full_pool()
        started = kernel.run(
            "import subprocess\nchild = subprocess.Popen(['sleep', '300'])"
        )
        assert started.status == "ok", started.reply
        tree = kernel.tree()
        # kernel, active worker and spare, each worker's group guard, the sleep
        assert len(tree) >= 6, [p.pid for p in tree]
        assert _named(tree, "sleep")

        reply, _ = _control_request(kernel, "shutdown_request", {"restart": False})

        assert reply["status"] == "ok"
        wait_until(
            lambda: all(is_gone(p) for p in tree),
            SHUTDOWN_TIMEOUT,
            "every process of the kernel to exit after shutdown_request",
        )


def _sleeps_by_thread(tree: list[psutil.Process]) -> dict[tuple[int, int], int]:
    """Voluntary context switches (a thread waking from a wait), per thread."""
    counts = {}
    for process in tree:
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            status = (task / "status").read_text()
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    counts[process.pid, int(task.name)] = int(line.split()[1])
    return counts


def test_idle_kernel_tree_never_wakes(tmp_path: Path) -> None:
    """No thread of the kernel, its workers or their guards wakes while idle."""
    with running_kernel(tmp_path / "ipython") as kernel:
        kernel.wait_for_full_pool()
        kernel.client.hb_channel.stop()  # its pings would wake the kernel
        time.sleep(IDLE_SETTLE_S)
        tree = kernel.tree()
        before = _sleeps_by_thread(tree)
        time.sleep(IDLE_WATCH_S)
        after = _sleeps_by_thread(tree)

    woke = {
        f"pid {pid} thread {tid}": after[pid, tid] - count
        for (pid, tid), count in before.items()
        if (pid, tid) in after and after[pid, tid] != count
    }
    assert len(tree) >= 3, [p.pid for p in tree]  # kernel, two workers (+ guards)
    assert woke == {}, f"threads woke in {IDLE_WATCH_S} s of idle: {woke}"
