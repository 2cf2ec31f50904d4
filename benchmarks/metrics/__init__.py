"""Every metric of the benchmark, in the order a run measures them."""

from __future__ import annotations

from benchmarks.metric import Metric
from benchmarks.metrics.crash import CRASH_RECOVERY
from benchmarks.metrics.idle import IDLE_COST
from benchmarks.metrics.interrupt import INTERRUPT_C, INTERRUPT_LOOP, INTERRUPT_SLEEP
from benchmarks.metrics.latency import INPUT_ROUNDTRIP, ROUNDTRIP
from benchmarks.metrics.memory import MEMORY
from benchmarks.metrics.output import OUTPUT_BIG, OUTPUT_LINES
from benchmarks.metrics.startup import STARTUP_EXEC, STARTUP_INFO

__all__ = ["METRICS", "select"]

# Quiet measurements first; the crash and the fresh kernels of `memory` last.
METRICS: tuple[Metric, ...] = (
    STARTUP_INFO,
    STARTUP_EXEC,
    ROUNDTRIP,
    INPUT_ROUNDTRIP,
    IDLE_COST,
    OUTPUT_LINES,
    OUTPUT_BIG,
    INTERRUPT_SLEEP,
    INTERRUPT_LOOP,
    INTERRUPT_C,
    CRASH_RECOVERY,
    MEMORY,
)


def select(names: list[str] | None) -> tuple[Metric, ...]:
    """The metrics named in `names` (all when None), in run order.

    Raises:
        ValueError: a name is unknown; the message lists the valid ones.
    """
    if names is None:
        return METRICS
    known = {metric.name for metric in METRICS}
    unknown = [name for name in names if name not in known]
    if unknown:
        choices = ", ".join(sorted(known))
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; choose from {choices}"
        )
    return tuple(metric for metric in METRICS if metric.name in names)
