"""The kernel's record of open comms, so `comm_info_request` never waits.

Comms live in the worker, but every comm_open and comm_close passes through
the kernel in one direction or the other; recording them here lets the
kernel answer comm_info at once, even while a cell keeps the worker busy.
A new worker starts with no comms, so the record is cleared on adoption.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CommRegistry"]


class CommRegistry:
    """comm_id -> target_name of the open comms (main loop writes, any thread reads)."""

    def __init__(self) -> None:
        self._targets: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<CommRegistry open={len(self._targets)}>"

    def track(self, msg_type: str, content: dict[str, Any]) -> None:
        """Note a comm_open or comm_close seen in either direction."""
        comm_id = content.get("comm_id")
        if not isinstance(comm_id, str):
            return
        if msg_type == "comm_open":
            self._targets[comm_id] = str(content.get("target_name", ""))
        elif msg_type == "comm_close":
            self._targets.pop(comm_id, None)

    def clear(self) -> None:
        self._targets.clear()

    def info(self, target: str | None) -> dict[str, dict[str, str]]:
        """The `comms` field of a comm_info_reply, filtered by `target`."""
        return {
            comm_id: {"target_name": name}
            for comm_id, name in dict(self._targets).items()
            if target is None or name == target
        }
