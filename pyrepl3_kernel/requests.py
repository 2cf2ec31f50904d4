"""Checks on Jupyter requests before any handler sees them.

A message is checked whole: frame count, signature (without recording it,
so the real deserialisation still detects replays), header, and the types
of the content fields each handler reads. A problem is described in one
short sentence for the log; a request that is well signed but malformed
gets an error reply, one that is not signed gets nothing.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from jupyter_client.session import Session as JupyterSession

__all__ = ["Problem", "check_frames"]

_NONE = type(None)

# Fields a handler reads, with the types it can handle; missing optional
# fields take the handler's default.
_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "execute_request": {"code": (str,)},
    "complete_request": {"code": (str,), "cursor_pos": (int, _NONE)},
    "inspect_request": {"code": (str,), "cursor_pos": (int,)},
    "is_complete_request": {"code": (str,)},
    "history_request": {"hist_access_type": (str,)},
    "shutdown_request": {"restart": (bool,)},
    "comm_open": {"comm_id": (str,), "target_name": (str,)},
    "comm_msg": {"comm_id": (str,)},
    "comm_close": {"comm_id": (str,)},
}
_OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "execute_request": {
        "silent": (bool,),
        "store_history": (bool,),
        "user_expressions": (dict, _NONE),
        "allow_stdin": (bool,),
        "stop_on_error": (bool,),
    },
    "inspect_request": {"detail_level": (int,)},
    "history_request": {
        "output": (bool,),
        "raw": (bool,),
        "n": (int, _NONE),
        "start": (int, _NONE),
        "stop": (int, _NONE),
        "session": (int, _NONE),
        "pattern": (str, _NONE),
        "unique": (bool,),
    },
    "comm_info_request": {"target_name": (str, _NONE)},
}


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a message was refused; `header` is set when a reply may be sent."""

    reason: str
    header: dict[str, Any] | None = None
    idents: list[bytes] | None = None


def _as_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def check_frames(session: JupyterSession, frames: list[Any]) -> Problem | None:
    """Return what is wrong with a multipart request, or None if it may be handled."""
    try:
        idents, parts = session.feed_identities(frames, copy=False)
    except ValueError:
        return Problem("no delimiter frame between routing identities and message")
    parts = [_as_bytes(part) for part in parts]
    if len(parts) < 5:
        return Problem(
            f"truncated message: {len(parts)} frames after the delimiter, need 5"
        )
    if session.auth is not None:
        signature = parts[0]
        if not signature:
            return Problem("unsigned message")
        if signature in session.digest_history:
            return Problem("replayed message (signature seen before)")
        if not hmac.compare_digest(signature, session.sign(parts[1:5])):
            return Problem("bad signature")
    try:
        header = session.unpack(parts[1])
        content = session.unpack(parts[4])
    except Exception as exc:  # any decoding failure means "not JSON we can read"
        return Problem(f"undecodable JSON ({type(exc).__name__})")
    if not isinstance(header, dict):
        return Problem(f"header is {type(header).__name__}, not an object")
    msg_type = header.get("msg_type")
    if not isinstance(msg_type, str) or not isinstance(header.get("msg_id"), str):
        return Problem("header lacks a string msg_type or msg_id")
    routing = [_as_bytes(i) for i in idents]
    if not isinstance(content, dict):
        return Problem(
            f"{msg_type} content is {type(content).__name__}, not an object",
            header,
            routing,
        )
    reason = _check_content(msg_type, content)
    return Problem(reason, header, routing) if reason else None


def _check_content(msg_type: str, content: dict[str, Any]) -> str | None:
    for name, types in _REQUIRED.get(msg_type, {}).items():
        if name not in content:
            if name == "restart":
                continue  # shutdown without `restart` means a plain shutdown
            return f"{msg_type} lacks {name!r}"
        if not _is_instance(content[name], types):
            return f"{msg_type} field {name!r} has type {type(content[name]).__name__}"
    for name, types in _OPTIONAL.get(msg_type, {}).items():
        if name in content and not _is_instance(content[name], types):
            return f"{msg_type} field {name!r} has type {type(content[name]).__name__}"
    return None


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int subclass; a bool where an int is expected is still wrong.
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)
