"""Output throughput: many short lines, and one big string, all the way to idle."""

from __future__ import annotations

import functools

from benchmarks.driver import ExecutionTrace
from benchmarks.metric import Metric, Sample
from benchmarks.settings import Settings
from benchmarks.summary import Row, Summary
from benchmarks.target import Target

__all__ = ["OUTPUT_BIG", "OUTPUT_LINES"]

# Each piece of the big string is its index in 7 digits and a comma (8 bytes),
# so a chunk lost, doubled or moved breaks the comparison.
PIECE_BYTES = 8
BIG_NAME = "_benchmark_big_string"


def lines_cell(count: int) -> str:
    return f"for i in range({count}):\n    print(i)"


@functools.cache
def expected_lines(count: int) -> str:
    return "".join(f"{i}\n" for i in range(count))


def big_setup_cell(size: int) -> str:
    return f"{BIG_NAME} = ''.join(f'{{i:07d}},' for i in range({size // PIECE_BYTES}))"


@functools.cache
def expected_big(size: int) -> str:
    return "".join(f"{i:07d}," for i in range(size // PIECE_BYTES)) + "\n"


def probe_lines(target: Target, settings: Settings) -> Sample:
    driver = target.session()
    trace = driver.run(
        lines_cell(settings.output_lines), settings.cell_timeout, keep_text=True
    )
    return _observe(trace, expected_lines(settings.output_lines))


def probe_big(target: Target, settings: Settings) -> Sample:
    driver = target.session()
    size = settings.output_big_bytes
    driver.run(big_setup_cell(size), settings.cell_timeout)
    trace = driver.run(f"print({BIG_NAME})", settings.cell_timeout, keep_text=True)
    # On failure the runner restarts the kernel, which frees the string as well.
    driver.run(f"del {BIG_NAME}", settings.cell_timeout)
    return _observe(trace, expected_big(size))


def _observe(trace: ExecutionTrace, expected: str) -> Sample:
    assert trace.idle_at is not None, "run() returns only after idle"
    sample = Sample()
    sample.add("time", trace.idle_at - trace.sent)
    sample.add("messages", trace.stream_msgs)
    sample.add("bytes", trace.stream_bytes)
    sample.add("complete", 1.0 if trace.stdout == expected else 0.0)
    return sample


def _rows() -> tuple[Row, ...]:
    return (
        Row("time to idle, median (s)", "time", Summary.MEDIAN, 1.0, 3),
        Row("IOPub stream messages, median", "messages", Summary.MEDIAN, 1.0, 0),
        Row("stream text bytes, median", "bytes", Summary.MEDIAN, 1.0, 0),
        Row("complete and in order", "complete", Summary.ALL_YES),
    )


OUTPUT_LINES = Metric(
    name="output_lines",
    probe=probe_lines,
    rows=_rows(),
    rounds=3,
    quick_rounds=1,
    method=(
        "cell printing `i` for i in range(100000): execute_request to status idle; "
        "stdout compared with the expected text"
    ),
)

OUTPUT_BIG = Metric(
    name="output_big",
    probe=probe_big,
    rows=_rows(),
    rounds=2,
    quick_rounds=1,
    method=(
        "cell printing one prebuilt 20 MB string (5 MB with --quick): "
        "execute_request to status idle; stdout compared with the expected text"
    ),
)
