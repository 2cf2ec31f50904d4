"""Request latency of a kernel at rest: an empty cell, and an `input()` round trip."""

from __future__ import annotations

from benchmarks.metric import Metric, Sample
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["INPUT_ROUNDTRIP", "ROUNDTRIP"]

INPUT_ANSWER = "benchmark"


def probe_roundtrip(target: Target, settings: Settings) -> Sample:
    driver = target.session()
    sample = Sample()
    for _ in range(settings.roundtrip_batch):
        trace = driver.run("pass", settings.cell_timeout)
        assert trace.idle_at is not None, "run() returns only after idle"
        sample.add("latency", trace.idle_at - trace.sent)
    return sample


def probe_input(target: Target, settings: Settings) -> Sample:
    driver = target.session()
    sample = Sample()
    for _ in range(settings.input_batch):
        trace = driver.send_execute("x = input()", allow_stdin=True)
        deadline = trace.sent + settings.cell_timeout
        driver.expect(
            trace, lambda t: bool(t.input_requests), deadline, "input_request"
        )
        request = trace.input_requests[0]
        driver.send_input_reply(request, INPUT_ANSWER)
        driver.expect(trace, lambda t: t.has_reply, deadline, "execute_reply")
        assert trace.reply is not None, "expect() returns only after the reply"
        sample.add("latency", trace.reply.arrived - request.arrived)
        driver.expect(trace, lambda t: t.is_done, deadline, "idle")
        trace.require_ok()
    return sample


ROUNDTRIP = Metric(
    name="roundtrip",
    probe=probe_roundtrip,
    rows=(
        Row("median (ms)", "latency", Summary.MEDIAN, 1e3, 2),
        Row("p99 (ms)", "latency", Summary.P99, 1e3, 2),
    ),
    rounds=6,
    quick_rounds=2,
    method="execute_request of `pass` to status idle of that request, back to back",
)

INPUT_ROUNDTRIP = Metric(
    name="input_roundtrip",
    probe=probe_input,
    rows=(Row("median (ms)", "latency", Summary.MEDIAN, 1e3, 2),),
    rounds=3,
    quick_rounds=2,
    method=(
        "cell `x = input()`: input_request received, answered at once, to its "
        "execute_reply"
    ),
)
