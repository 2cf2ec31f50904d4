"""Memory of a fresh kernel's process tree: after start, after output, during a flood.

PSS splits shared pages among the processes that map them, so summing it over
the tree does not count the pages a worker shares with its parent twice. The
flood samples run on a helper thread while the main thread drains IOPub, as a
frontend would; the peak is the largest sum seen.
"""

from __future__ import annotations

import threading
import time
from typing import final

import psutil

from benchmarks.driver import KernelDriver
from benchmarks.metric import Metric, Sample
from benchmarks.metrics.output import lines_cell
from benchmarks.proctree import MemoryReading, describe_tree, tree_memory
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["MEMORY"]

FLOOD_CELL = "i = 0\nwhile True:\n    print(i)\n    i += 1"


@final
class PeakSampler:
    """Reads a tree's memory every `interval` s on its own thread, keeping the peak.

    `start` and `stop` belong to the caller's thread; the thread only writes
    `peak` and `error`, which the caller reads after `stop` has joined it.
    """

    def __init__(self, pid: int, interval: float) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="pss-sampler", daemon=True
        )
        self.peak: MemoryReading | None = None
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reading = tree_memory(self._pid)
            except psutil.Error as exc:
                # The kernel is gone; the caller learns it from `error`.
                self.error = f"{type(exc).__name__}: {exc}"
                return
            if self.peak is None or reading.total_bytes > self.peak.total_bytes:
                self.peak = reading
            self._stop.wait(self._interval)


def probe_memory(target: Target, settings: Settings) -> Sample:
    sample = Sample()
    with target.fresh() as driver:
        driver.start()
        driver.wait_ready(settings.start_timeout)
        driver.run("1+1", settings.cell_timeout)
        first = _settled_reading(driver, settings)
        sample.add("after_start", first.total_bytes)
        sample.add("processes", first.processes)
        sample.note(
            f"{first.processes} processes after start, {first.kind} summed:"
            f" {describe_tree(driver.pid)}"
        )

        driver.run(lines_cell(settings.output_lines), settings.cell_timeout)
        sample.add("after_lines", _settled_reading(driver, settings).total_bytes)
        _flood(driver, settings, sample)
    return sample


def _settled_reading(driver: KernelDriver, settings: Settings) -> MemoryReading:
    time.sleep(settings.memory_settle)
    return tree_memory(driver.pid)


def _flood(driver: KernelDriver, settings: Settings, sample: Sample) -> None:
    """Run FLOOD_CELL for `flood_seconds`, interrupt it, and record start and peak."""
    sample.add("flood_start", tree_memory(driver.pid).total_bytes)
    sampler = PeakSampler(driver.pid, settings.memory_sample_interval)
    sampler.start()
    try:
        trace = driver.send_execute(FLOOD_CELL)
        deadline = trace.sent + settings.cell_timeout
        driver.expect(trace, lambda t: t.has_started, deadline, "execute_input")
        assert trace.started_at is not None, "expect() returned after execute_input"
        # Drain output, as a frontend does, until the flood has run long enough.
        driver.follow(
            trace, lambda t: t.has_reply, trace.started_at + settings.flood_seconds
        )
        interrupted = time.monotonic()
        flood_rate = trace.stream_bytes / (interrupted - trace.started_at)
        driver.interrupt()
        stopped = driver.follow(
            trace, lambda t: t.has_reply, interrupted + settings.interrupt_cap
        )
        if stopped:
            driver.expect(
                trace, lambda t: t.is_done, interrupted + settings.cell_timeout, "idle"
            )
    finally:
        sampler.stop()

    if sampler.peak is None:
        raise RuntimeError(f"no memory sample during the flood: {sampler.error}")
    sample.add("flood_peak", sampler.peak.total_bytes)
    sample.add(
        "flood_growth", sampler.peak.total_bytes - sample.values["flood_start"][-1]
    )
    sample.add("flood_text", flood_rate)
    sample.add("flood_stopped", 1.0 if stopped else 0.0)


MB = 1e-6  # bytes -> MB (10**6)

MEMORY = Metric(
    name="memory",
    probe=probe_memory,
    rows=(
        Row("PSS after start (MB)", "after_start", Summary.MEDIAN, MB, 1),
        Row("PSS after output_lines (MB)", "after_lines", Summary.MEDIAN, MB, 1),
        Row("PSS at flood start (MB)", "flood_start", Summary.MEDIAN, MB, 1),
        Row("PSS peak during flood (MB)", "flood_peak", Summary.MEDIAN, MB, 1),
        Row("PSS growth during flood (MB)", "flood_growth", Summary.MEDIAN, MB, 1),
        Row(
            "flood text received until interrupt (MB/s)",
            "flood_text",
            Summary.MEDIAN,
            MB,
            2,
        ),
        Row("flood stopped by interrupt", "flood_stopped", Summary.ALL_YES),
        Row("processes in tree", "processes", Summary.MAX, 1.0, 0),
    ),
    rounds=1,
    quick_rounds=1,
    method=(
        "fresh kernel, PSS summed over its process tree: after `1+1`, after the "
        "output_lines cell, then every 0.1 s during `while True: print(i)` "
        "interrupted after 10 s (3 s with --quick)"
    ),
)
