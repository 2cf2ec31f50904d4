"""Message kinds spoken between the kernel and its worker.

Output kinds reuse the Jupyter message types (and content shapes) so the
kernel forwards their content to IOPub without rewriting it. The remaining
kinds exist only on the worker channel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OUTPUT_KINDS", "Kind", "WorkerMessage"]


class Kind(enum.StrEnum):
    """Every message kind; the value is the header's ``msg_type``."""

    # worker -> kernel: output, forwarded to IOPub as is
    STREAM = "stream"
    DISPLAY_DATA = "display_data"
    UPDATE_DISPLAY_DATA = "update_display_data"
    CLEAR_OUTPUT = "clear_output"
    EXECUTE_RESULT = "execute_result"
    ERROR = "error"
    COMM_OPEN = "comm_open"
    COMM_MSG = "comm_msg"
    COMM_CLOSE = "comm_close"
    # worker -> kernel: control
    READY = "ready"  # handshake; content has pid and execution_count
    REPLY = "reply"  # the answer to request `req`
    INTERRUPT_ACK = "interrupt_ack"  # user code of execution `req` got SIGINT
    INPUT_REQUEST = "input_request"  # metadata `input_id` names the wait
    INPUT_CANCEL = "input_cancel"  # the wait `input_id` ended without a reply
    KERNEL_ACTION = "kernel_action"  # a magic asks the kernel: restart, stats
    FLUSH = "flush"  # explicit flush: answer once everything before it arrived
    # kernel -> worker
    EXECUTE = "execute"
    COMPLETE = "complete"
    INSPECT = "inspect"
    IS_COMPLETE = "is_complete"
    HISTORY = "history"
    COMM_INFO = "comm_info"
    ADOPT = "adopt"  # a spare becomes the active worker
    INPUT_REPLY = "input_reply"
    CREDIT = "credit"  # content `nbytes` of output left the kernel
    FLUSHED = "flushed"  # the kernel holds everything sent before `flush_id`
    SHUTDOWN = "shutdown"


OUTPUT_KINDS = frozenset(
    {
        Kind.STREAM,
        Kind.DISPLAY_DATA,
        Kind.UPDATE_DISPLAY_DATA,
        Kind.CLEAR_OUTPUT,
        Kind.EXECUTE_RESULT,
        Kind.ERROR,
        Kind.COMM_OPEN,
        Kind.COMM_MSG,
        Kind.COMM_CLOSE,
    }
)


@dataclass(frozen=True, slots=True)
class WorkerMessage:
    """One message on the worker channel.

    `parent` is the Jupyter parent header the worker chose for output (the
    running cell, a comm message, a thread's cell); `req` ties control
    messages to the kernel request they belong to; `nbytes` is the size of
    the signed frames, counted against the worker's output credit.
    """

    kind: Kind
    content: dict[str, Any]
    parent: dict[str, Any] = field(default_factory=dict)
    req: str = ""
    buffers: tuple[bytes, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0
