"""Checks on Jupyter requests before any handler sees them.

A message is checked whole: frame count, signature (without recording it,
so the real deserialisation still detects replays), header, and the types
of the content fields each handler reads. A problem is described in one
short sentence for the log; a request that is well signed but malformed
gets an error reply, one that is not signed gets nothing.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jupyter_client.session import Session as JupyterSession

__all__ = ["REPLAYED", "Problem", "check_frames", "replayed"]

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
    "inspect_request": {"detail_level": (int,), "omit_sections": (list,)},
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


REPLAYED = "replayed message (signature seen before)"


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a message was refused; `header` is set when a reply may be sent."""

    reason: str
    header: dict[str, Any] | None = None
    idents: list[bytes] | None = None


def _as_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def replayed(session: JupyterSession, frames: list[Any]) -> bool:
    """Whether an already checked message's signature has been used since.

    A message checked on arrival can still turn out to be a replay by the
    time it is handled, when its twin was accepted in between.
    """
    if session.auth is None:
        return False
    try:
        _, parts = session.feed_identities(frames, copy=False)
    except ValueError:
        return False  # not ours to judge: the full check ran on arrival
    return bool(parts) and _as_bytes(parts[0]) in session.digest_history


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
            return Problem(REPLAYED)
        if not hmac.compare_digest(signature, session.sign(parts[1:5])):
            return Problem("bad signature")
    try:
        header = _strict_json(parts[1])
    except (ValueError, RecursionError) as exc:
        return Problem(f"header is not strict UTF-8 JSON: {_short(exc)}")
    if not isinstance(header, dict):
        return Problem(f"header is {type(header).__name__}, not an object")
    reason = _check_header(header)
    if reason:
        return Problem(reason)
    msg_type = header["msg_type"]
    routing = [_as_bytes(i) for i in idents]
    if header.get("subshell_id") is not None:
        return Problem("subshells are not supported by this kernel", header, routing)
    try:
        parent, metadata, content = (_strict_json(part) for part in parts[2:5])
    except (ValueError, RecursionError) as exc:
        return Problem(
            f"{msg_type} is not strict UTF-8 JSON: {_short(exc)}", header, routing
        )
    for name, value in (
        ("parent header", parent),
        ("metadata", metadata),
        ("content", content),
    ):
        if not isinstance(value, dict):
            return Problem(
                f"{msg_type} {name} is {type(value).__name__}, not an object",
                header,
                routing,
            )
    reason = _check_content(msg_type, content)
    return Problem(reason, header, routing) if reason else None


def _strict_json(data: bytes) -> Any:
    """Parse JSON that is valid UTF-8, has no NaN/Infinity and no lone surrogates."""
    text = data.decode("utf-8")  # strict: a replacement character hides garbage
    value = json.loads(text, parse_constant=_refuse_constant)
    # JSON escapes can still spell a lone surrogate (\ud800), which no reply
    # or IOPub message carrying it could be packed with.
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _check_header(header: dict[str, Any]) -> str | None:
    for name in ("msg_id", "msg_type", "version"):
        if not isinstance(header.get(name), str):
            return f"header field {name!r} is missing or not a string"
    for name in ("session", "username", "date"):
        if name in header and not isinstance(header[name], str):
            return f"header field {name!r} is not a string"
    if "date" in header:
        try:
            datetime.fromisoformat(header["date"].replace("Z", "+00:00"))
        except ValueError:
            return f"header date {header['date'][:40]!r} is not an ISO 8601 time"
    return None


def _check_content(msg_type: str, content: dict[str, Any]) -> str | None:
    for name, types in _REQUIRED.get(msg_type, {}).items():
        if name not in content:
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
