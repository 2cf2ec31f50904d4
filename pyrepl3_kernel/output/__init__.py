"""The output stage between the session and IOPub."""

from __future__ import annotations

from .limiter import TokenBucket
from .stage import OutputStage

__all__ = ["OutputStage", "TokenBucket"]
