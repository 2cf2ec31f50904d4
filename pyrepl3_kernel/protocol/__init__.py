"""The worker protocol: message kinds and the signed ZeroMQ channel."""

from __future__ import annotations

from .channel import WorkerChannel, pack, unpack
from .messages import OUTPUT_KINDS, Kind, WorkerMessage

__all__ = ["OUTPUT_KINDS", "Kind", "WorkerChannel", "WorkerMessage", "pack", "unpack"]
