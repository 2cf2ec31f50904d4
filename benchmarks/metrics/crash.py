"""Crash recovery: a segfaulting cell, then the time until the next cell's result.

A kernel that survives answers the crashing cell with an error, and the next
cell follows at once. A kernel that dies is restarted here, as soon as the
benchmark sees the process exit (through a pidfd), with
`restart_kernel(now=True)`: no frontend restarts sooner. The time then covers
detection, restart, kernel_info and the next cell, all counted honestly.
"""

from __future__ import annotations

from benchmarks.errors import KernelDiedError, ProbeCheckError
from benchmarks.metric import Metric, Sample
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["CRASH_RECOVERY"]

CRASH_CELL = "import ctypes; ctypes.string_at(0)"
NEXT_CELL = "print(1)"


def probe_crash(target: Target, settings: Settings) -> Sample:
    driver = target.session()
    sample = Sample()
    pid_before = driver.pid
    crash = driver.send_execute(CRASH_CELL)
    deadline = crash.sent + settings.cell_timeout
    try:
        driver.expect(crash, lambda t: t.has_reply, deadline, "reply to the crash")
    except KernelDiedError as exc:
        sample.note(f"kernel died ({exc.returncode}); restarted on detection")
        driver.restart()
        driver.wait_ready(settings.start_timeout)
    else:
        assert crash.reply is not None, "expect() returns only after the reply"
        content = crash.reply.content
        sample.note(
            f"crash cell reply: {content.get('status')} {content.get('ename', '')}"
        )
        # The idle of the crash cell may trail its reply; it is not waited for,
        # the next request simply queues behind it.

    after = driver.run(NEXT_CELL, settings.cell_timeout, keep_text=True)
    if after.stdout != "1\n":
        raise ProbeCheckError(f"next cell printed {after.stdout!r}, expected '1\\n'")
    assert after.idle_at is not None, "run() returns only after idle"
    sample.add("time", after.idle_at - crash.sent)
    sample.add("restarted", 0.0 if driver.pid == pid_before else 1.0)
    return sample


CRASH_RECOVERY = Metric(
    name="crash_recovery",
    probe=probe_crash,
    rows=(
        Row("to next cell's idle, median (s)", "time", Summary.MEDIAN, 1.0, 3),
        Row("kernel process replaced", "restarted", Summary.COUNT),
    ),
    rounds=3,
    quick_rounds=1,
    method=(
        f"`{CRASH_CELL}` sent, to status idle of the next cell `{NEXT_CELL}` "
        "(printing 1); a kernel that dies is restarted as soon as its exit is seen"
    ),
)
