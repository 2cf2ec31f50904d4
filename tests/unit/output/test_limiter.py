"""Tests of `pyrepl3_kernel.output.limiter.TokenBucket` on a fake clock.

Rates are powers of two so that every expected delay is an exact float.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyrepl3_kernel.output.limiter import TokenBucket

MSGS_PER_S = 4.0  # a bucket of 4 messages refilled in 0.25 s steps
BYTES_PER_S = 1024.0  # a bucket of 1024 bytes


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _bucket(clock: FakeClock, burst_s: float = 1.0) -> TokenBucket:
    return TokenBucket(MSGS_PER_S, BYTES_PER_S, clock, burst_s=burst_s)


def _spend_messages(bucket: TokenBucket, count: int, nbytes: int = 0) -> None:
    for _ in range(count):
        assert bucket.delay_for(nbytes) == 0.0
        bucket.take(nbytes)


def test_bucket_starts_full_and_allows_one_burst() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)

    _spend_messages(bucket, 4)

    assert bucket.delay_for(0) == 0.25
    assert repr(bucket) == "<TokenBucket msgs=0.0 bytes=1024>"


def test_bucket_refills_from_clock_only() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)
    _spend_messages(bucket, 4)

    assert [bucket.delay_for(0) for _ in range(3)] == [0.25, 0.25, 0.25]
    clock.advance(0.125)
    assert bucket.delay_for(0) == 0.125
    clock.advance(0.125)
    assert bucket.delay_for(0) == 0.0


def test_bucket_refill_stops_at_one_burst() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)
    _spend_messages(bucket, 4, nbytes=256)

    clock.advance(3600.0)

    assert repr(bucket) == "<TokenBucket msgs=4.0 bytes=1024>"
    _spend_messages(bucket, 4)
    assert bucket.delay_for(0) == 0.25


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)
    _spend_messages(bucket, 4)

    clock.advance(-10.0)

    assert bucket.delay_for(0) == 0.25


def test_delay_for_bytes_is_the_byte_deficit_over_the_rate() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)
    bucket.take(1024)

    assert bucket.delay_for(0) == 0.0
    assert bucket.delay_for(256) == 0.25
    assert bucket.delay_for(512) == 0.5
    assert bucket.delay_for(1024) == 1.0


def test_delay_for_takes_the_longer_of_both_deficits() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)
    _spend_messages(bucket, 3, nbytes=256)  # 1 message and 256 bytes left
    bucket.take(256)  # 0 messages and 0 bytes left

    assert bucket.delay_for(128) == 0.25  # the message deficit decides
    assert bucket.delay_for(512) == 0.5  # the byte deficit decides


def test_message_bigger_than_bucket_passes_from_full_bucket() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)

    assert bucket.delay_for(10_000_000) == 0.0
    bucket.take(10_000_000)

    assert repr(bucket) == "<TokenBucket msgs=3.0 bytes=-9998976>"


def test_message_bigger_than_bucket_is_owed_in_full() -> None:
    """The long-run byte rate holds even across one huge message."""
    clock = FakeClock()
    bucket = _bucket(clock)
    bucket.take(1024 + 2048)  # a full bucket, then 2048 bytes of debt

    assert bucket.delay_for(1) == (2048 + 1) / 1024.0
    clock.advance(2.0)
    assert bucket.delay_for(1024) == 1.0, "debt repaid, then a full bucket for 1 KB"


def test_message_bigger_than_bucket_waits_for_a_full_bucket() -> None:
    clock = FakeClock()
    bucket = _bucket(clock)
    bucket.take(512)

    assert bucket.delay_for(4096) == 0.5


def test_burst_seconds_scale_both_buckets() -> None:
    clock = FakeClock()
    bucket = _bucket(clock, burst_s=0.5)

    _spend_messages(bucket, 2, nbytes=256)

    assert bucket.delay_for(0) == 0.25
    assert repr(bucket) == "<TokenBucket msgs=0.0 bytes=0>"
    clock.advance(0.5)
    assert repr(bucket) == "<TokenBucket msgs=2.0 bytes=512>"


@pytest.mark.parametrize(
    ("msgs_per_s", "bytes_per_s"),
    [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -5.0)],
)
def test_bucket_rejects_rates_that_are_not_positive(
    msgs_per_s: float, bytes_per_s: float
) -> None:
    with pytest.raises(ValueError, match="msgs_per_s and bytes_per_s must be positive"):
        TokenBucket(msgs_per_s, bytes_per_s, FakeClock())


@pytest.mark.parametrize("burst_s", [0.0, -1.0])
def test_bucket_rejects_burst_that_is_not_positive(burst_s: float) -> None:
    with pytest.raises(ValueError, match="burst_s must be positive"):
        TokenBucket(1.0, 1.0, FakeClock(), burst_s=burst_s)


def test_bucket_rejects_nan_rate() -> None:
    with pytest.raises(ValueError, match="msgs_per_s"):
        TokenBucket(math.nan, 1.0, FakeClock())


def test_bucket_below_one_message_per_burst_still_lets_messages_pass() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, 1024.0, clock)  # e.g. OutputStage.msg_rate_limit=0.5

    for _ in range(3):
        clock.advance(bucket.delay_for(10))
        assert bucket.delay_for(10) == 0.0
        bucket.take(10)


@settings(deadline=None, database=None)  # pure arithmetic: slow only on a busy host
# Found by hypothesis: 130072 s on the clock, where one ulp is about 1.5e-11 s.
@example(msgs_per_s=86.0, bytes_per_s=1.0, burst_s=0.01, sizes=[1, 130072, 0, 1])
@given(
    msgs_per_s=st.floats(1.0, 10_000.0),
    bytes_per_s=st.floats(1.0, 10_000_000.0),
    burst_s=st.floats(0.01, 10.0),
    sizes=st.lists(st.integers(0, 50_000_000), min_size=1, max_size=30),
)
def test_waiting_the_announced_delay_is_enough_and_keeps_the_rate(
    msgs_per_s: float, bytes_per_s: float, burst_s: float, sizes: list[int]
) -> None:
    """A sender that waits exactly `delay_for` may always send then."""
    burst_s = max(burst_s, 1.0 / msgs_per_s)  # at least one message per burst
    clock = FakeClock()
    bucket = TokenBucket(msgs_per_s, bytes_per_s, clock, burst_s=burst_s)

    owed = 0.0
    for nbytes in sizes:
        delay = bucket.delay_for(nbytes)
        # Slack for float rounding: relative to the delays involved, plus a few
        # ulps of the clock, whose differences lose precision as it grows.
        slack = 1e-9 * max(1.0, burst_s, owed / bytes_per_s) + 16 * math.ulp(clock.now)
        # Never longer than repaying what was overdrawn, plus one burst.
        assert 0.0 <= delay <= owed / bytes_per_s + burst_s + slack
        clock.advance(delay)
        assert bucket.delay_for(nbytes) <= slack + 16 * math.ulp(clock.now)
        bucket.take(nbytes)
        owed = max(0.0, nbytes - bytes_per_s * burst_s)
