"""Interrupt latency: from `interrupt_kernel()` to the execute_reply of the cell.

The cell is interrupted a fixed settle time after its execute_input arrives,
so the code is surely running. ipykernel cannot publish execute_input while C
code holds the GIL, so after a short wait the settle time starts anyway. A
kernel that has not replied within the cap counts as "no reply" and is
restarted, so the metrics after it still run: ipykernel cannot interrupt a C
call that holds the GIL.
"""

from __future__ import annotations

import time

from benchmarks.metric import Metric, Probe, Sample
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["INTERRUPT_C", "INTERRUPT_LOOP", "INTERRUPT_SLEEP"]


def interrupt_probe(code: str) -> Probe:
    """A probe that runs `code` (which never ends by itself) and interrupts it once."""

    def probe(target: Target, settings: Settings) -> Sample:
        driver = target.session()
        sample = Sample()
        trace = driver.send_execute(code)
        started_by = trace.sent + settings.execute_input_wait
        if not driver.follow(trace, lambda t: t.has_started, started_by):
            sample.note(
                f"execute_input not seen within {settings.execute_input_wait:g} s "
                "(IOPub blocked?); settle time counted from then"
            )
        time.sleep(settings.interrupt_settle)

        interrupted = time.monotonic()
        driver.interrupt()
        cap = interrupted + settings.interrupt_cap
        if not driver.follow(trace, lambda t: t.has_reply, cap):
            sample.add("no_reply", 1.0)
            sample.note(
                f"no reply within {settings.interrupt_cap:g} s; kernel restarted"
            )
            driver.restart()
            driver.wait_ready(settings.start_timeout)
            return sample

        assert trace.reply is not None, "follow() returned True on the reply"
        sample.add("no_reply", 0.0)
        sample.add("latency", trace.reply.arrived - interrupted)
        content = trace.reply.content
        sample.note(f"reply status {content.get('status')} {content.get('ename', '')}")
        driver.expect(trace, lambda t: t.is_done, cap + settings.cell_timeout, "idle")
        return sample

    return probe


def _rows(cap: str) -> tuple[Row, ...]:
    return (
        Row("median (ms)", "latency", Summary.MEDIAN, 1e3, 1),
        Row("p99 (ms)", "latency", Summary.P99, 1e3, 1),
        Row(f"no reply within {cap}", "no_reply", Summary.COUNT),
    )


_METHOD = (
    "`{code}`: `interrupt_kernel()` issued 0.3 s after execute_input, to the "
    "execute_reply; capped at 5 s, then counted as no reply and the kernel restarted"
)

INTERRUPT_SLEEP = Metric(
    name="interrupt_sleep",
    probe=interrupt_probe("import time\ntime.sleep(60)"),
    rows=_rows("5 s"),
    rounds=5,
    quick_rounds=2,
    method=_METHOD.format(code="time.sleep(60)"),
)

INTERRUPT_LOOP = Metric(
    name="interrupt_loop",
    probe=interrupt_probe("while True:\n    pass"),
    rows=_rows("5 s"),
    rounds=5,
    quick_rounds=2,
    method=_METHOD.format(code="while True: pass"),
)

INTERRUPT_C = Metric(
    name="interrupt_c",
    probe=interrupt_probe("sum(range(10**12))"),
    rows=_rows("5 s"),
    rounds=3,
    quick_rounds=1,
    method=_METHOD.format(code="sum(range(10**12))"),
)
