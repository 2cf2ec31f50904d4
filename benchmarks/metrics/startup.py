"""Start-up: from `start_kernel()` to the first kernel_info reply and first result."""

from __future__ import annotations

from benchmarks.metric import Metric, Sample
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["STARTUP_EXEC", "STARTUP_INFO"]


def probe_info(target: Target, settings: Settings) -> Sample:
    return _probe(target, settings, run_cell=False)


def probe_exec(target: Target, settings: Settings) -> Sample:
    return _probe(target, settings, run_cell=True)


def _probe(target: Target, settings: Settings, *, run_cell: bool) -> Sample:
    sample = Sample()
    with target.fresh() as driver:
        launched = driver.start()
        # One request, sent at once: ZeroMQ queues it until the kernel binds.
        info = driver.wait_ready(settings.start_timeout)
        sample.add("info", info.arrived - launched)
        if run_cell:
            trace = driver.run("1+1", settings.cell_timeout)
            assert trace.idle_at is not None, "run() returns only after idle"
            sample.add("exec", trace.idle_at - launched)
    return sample


STARTUP_INFO = Metric(
    name="startup_info",
    probe=probe_info,
    rows=(Row("to kernel_info_reply, median (ms)", "info", Summary.MEDIAN, 1e3, 0),),
    rounds=5,
    quick_rounds=1,
    method=(
        "fresh kernel: `start_kernel()` to the reply of one kernel_info_request "
        "sent right after launch"
    ),
)

STARTUP_EXEC = Metric(
    name="startup_exec",
    probe=probe_exec,
    rows=(Row("to idle of `1+1`, median (ms)", "exec", Summary.MEDIAN, 1e3, 0),),
    rounds=5,
    quick_rounds=1,
    method=(
        "fresh kernel: `start_kernel()` to status idle of `1+1`, sent (as frontends "
        "do) once kernel_info has been answered"
    ),
    covers=("startup_info",),
)
