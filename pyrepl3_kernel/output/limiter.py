"""A token bucket for messages and bytes per second toward IOPub.

Design note. Tokens are never refilled by a timer: the bucket computes how
many it holds from the monotonic clock whenever it is asked (`clock` is
passed in, so tests drive a fake one). A caller short of tokens learns how
long until it has enough (`delay_for`) and may arm one one-shot wake-up for
exactly that long. A single message larger than the bucket goes out whole
once the bucket is full and its full size is owed: what follows waits until
the long-run rate holds again. (The output stage splits stream text to the
bucket's size, so only displays larger than a second's worth overdraw.)
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Two buckets (messages, bytes) that must both allow a send."""

    def __init__(
        self,
        msgs_per_s: float,
        bytes_per_s: float,
        clock: Callable[[], float],
        burst_s: float = 1.0,
    ) -> None:
        if not (msgs_per_s > 0 and bytes_per_s > 0):  # also refuses NaN
            raise ValueError("msgs_per_s and bytes_per_s must be positive")
        if not burst_s > 0:
            raise ValueError("burst_s must be positive (seconds of rate kept as burst)")
        self.msgs_per_s = msgs_per_s
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._msg_cap = msgs_per_s * burst_s
        self._byte_cap = bytes_per_s * burst_s
        self._msgs = self._msg_cap
        self._bytes = self._byte_cap
        self._at = clock()

    def __repr__(self) -> str:
        self._refill()
        return f"<TokenBucket msgs={self._msgs:.1f} bytes={self._bytes:.0f}>"

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._msgs = min(self._msg_cap, self._msgs + elapsed * self.msgs_per_s)
        self._bytes = min(self._byte_cap, self._bytes + elapsed * self.bytes_per_s)

    def delay_for(self, nbytes: int) -> float:
        """Seconds until one message of `nbytes` may go; 0.0 means now."""
        self._refill()
        # Below one message per burst, a full bucket still lets one through.
        need_msgs = max(0.0, min(1.0, self._msg_cap) - self._msgs) / self.msgs_per_s
        # Overdraw allowed from a full bucket, so huge messages still pass.
        byte_target = min(float(nbytes), self._byte_cap)
        need_bytes = max(0.0, byte_target - self._bytes) / self.bytes_per_s
        return max(need_msgs, need_bytes)

    def take(self, nbytes: int) -> None:
        """Spend tokens for one message of `nbytes` (call when `delay_for` is 0)."""
        self._refill()
        self._msgs -= 1.0
        self._bytes -= nbytes
