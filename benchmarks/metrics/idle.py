"""Idle cost: CPU time and wake-ups of the kernel's process tree while nothing happens.

The benchmark's client has no heartbeat channel and sends nothing during the
window, so every wake-up counted is the kernel's own doing (timers, pollers).
"""

from __future__ import annotations

import time

from benchmarks.metric import Metric, Sample
from benchmarks.proctree import snapshot, usage_between
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["IDLE_COST"]


def probe_idle(target: Target, settings: Settings) -> Sample:
    driver = target.session()
    driver.run("pass", settings.cell_timeout)
    time.sleep(settings.idle_settle)

    before = snapshot(driver.pid)
    started = time.monotonic()
    time.sleep(settings.idle_seconds)
    after = snapshot(driver.pid)
    elapsed = time.monotonic() - started

    usage = usage_between(before, after)
    sample = Sample()
    sample.add("cpu", usage.cpu_seconds)
    sample.add("wakeups", usage.voluntary)
    sample.add("wakeups_per_s", usage.voluntary / elapsed)
    sample.add("involuntary", usage.involuntary)
    sample.add("processes", usage.processes)
    sample.add("threads", usage.threads)
    busiest = ", ".join(f"{name}: {count}" for name, count in usage.busiest)
    sample.note(
        f"{elapsed:.1f} s window, {usage.processes} processes, {usage.threads} threads;"
        f" most wake-ups: {busiest or 'none'}"
    )
    return sample


IDLE_COST = Metric(
    name="idle_cost",
    probe=probe_idle,
    rows=(
        Row("CPU time in window (ms)", "cpu", Summary.MEDIAN, 1e3, 1),
        Row("wake-ups (voluntary ctx switches)", "wakeups", Summary.MEDIAN, 1.0, 0),
        Row("wake-ups per second", "wakeups_per_s", Summary.MEDIAN, 1.0, 1),
        Row("involuntary ctx switches", "involuntary", Summary.MEDIAN, 1.0, 0),
        Row("processes in tree", "processes", Summary.MAX, 1.0, 0),
        Row("threads in tree", "threads", Summary.MAX, 1.0, 0),
    ),
    rounds=1,
    quick_rounds=1,
    method=(
        "session kernel idle for 30 s (5 s with --quick) after 1 s of quiet, client "
        "without heartbeat: on-CPU time (schedstat) and context switches per thread, "
        "summed over the kernel and all its descendants"
    ),
)
