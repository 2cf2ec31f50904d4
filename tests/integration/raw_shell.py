"""Send hand-built, often invalid, multipart messages to a kernel's shell port.

`RawShell` connects a DEALER socket of its own, so whatever the kernel sends
back (or, as the tests hope, does not) is seen here and never mixes with a
client's replies. Frames are built by hand instead of through
`Session.serialize`, which refuses most of what these tests need to send.
"""

from __future__ import annotations

__all__ = ["RawKind", "RawReply", "RawShell"]

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, final

import zmq
from jupyter_client.session import DELIM, Session

WRONG_KEY = b"this-is-not-the-kernel-key"  # signs messages the kernel must drop


class RawKind(enum.Enum):
    """The kinds of message `RawShell.send` can build."""

    BAD_SIGNATURE = "bad_signature"  # execute_request signed with another key
    UNSIGNED = "unsigned"  # execute_request with an empty signature frame
    GARBAGE = "garbage"  # frames that are not a Jupyter message at all
    BAD_JSON_CONTENT = "bad_json_content"  # correctly signed, content not JSON
    MISSING_CODE = "missing_code"  # execute_request whose content lacks `code`
    WRONG_TYPES = "wrong_types"  # execute_request fields of the wrong types
    UNKNOWN_TYPE = "unknown_type"  # correctly signed, msg_type nobody handles


@dataclass(frozen=True)
class RawReply:
    """A message the kernel sent back to the raw socket."""

    msg_type: str | None  # None when the frames could not be parsed
    parent_id: str | None
    content: Mapping[str, Any]


@final
class RawShell:
    """A DEALER socket on the kernel's shell port, used by one test thread."""

    def __init__(self, connection_info: Mapping[str, Any]) -> None:
        key = connection_info["key"]
        scheme = connection_info.get("signature_scheme", "hmac-sha256")
        self._session = Session(key=key, signature_scheme=scheme)
        self._impostor = Session(key=WRONG_KEY, signature_scheme=scheme)
        self._context = zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        self._socket.linger = 0
        self._socket.connect(_shell_address(connection_info))
        self._last_frames: list[bytes] = []  # what `resend_last` sends again

    def __repr__(self) -> str:
        state = "closed" if self._socket.closed else "open"
        return f"<RawShell {state} session={self._session.session}>"

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def send(self, kind: RawKind, code: str = "print('raw message ran')") -> str | None:
        """Send one message (or, for GARBAGE, two) of `kind`; return its msg_id.

        `code` is used by the kinds that carry an executable request. GARBAGE
        has no msg_id and returns None.
        """
        if kind is RawKind.GARBAGE:
            self._send([b"\x01\xfe this is no jupyter message"])
            self._send([DELIM, b"0123abcd", b"{", b"[", b"not json", b"}"])
            return None
        request = _execute_content(code)
        if kind is RawKind.BAD_SIGNATURE:
            return self._send_signed("execute_request", request, self._impostor)
        if kind is RawKind.UNSIGNED:
            return self._send_signed("execute_request", request, None)
        if kind is RawKind.BAD_JSON_CONTENT:
            broken = b'{"code": "print(2)", "silent": no json here'
            return self._send_signed("execute_request", broken, self._session)
        if kind is RawKind.MISSING_CODE:
            del request["code"]
            return self._send_signed("execute_request", request, self._session)
        if kind is RawKind.WRONG_TYPES:
            request.update(code=271828, silent="no", user_expressions=["x"])
            request.update(allow_stdin="perhaps", stop_on_error=7)
            return self._send_signed("execute_request", request, self._session)
        if kind is RawKind.UNKNOWN_TYPE:
            return self._send_signed("no_such_thing_request", {"y": 2}, self._session)
        raise ValueError(f"kind must be a RawKind, got {kind!r}")

    def send_valid(self, code: str) -> str:
        """Send a correctly signed execute_request (stdin not allowed)."""
        return self._send_signed(
            "execute_request", _execute_content(code), self._session
        )

    def resend_last(self) -> None:
        """Send the frames of the previous message again, byte for byte (a replay)."""
        if not self._last_frames:
            raise ValueError("resend_last needs a message sent before it")
        self._socket.send_multipart(self._last_frames)

    def replies_within(self, seconds: float) -> list[RawReply]:
        """Every message the kernel sends to this socket in the next `seconds`."""
        deadline = time.monotonic() + seconds
        replies = []
        while (remaining := deadline - time.monotonic()) > 0:
            if self._socket.poll(max(1, int(remaining * 1000))):
                replies.append(self._parse(self._socket.recv_multipart()))
        return replies

    def wait_reply(self, msg_id: str, timeout: float) -> RawReply | None:
        """The first reply whose parent is `msg_id`, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._socket.poll(max(1, int(remaining * 1000))):
                break
            reply = self._parse(self._socket.recv_multipart())
            if reply.parent_id == msg_id:
                return reply
        return None

    def _send_signed(
        self, msg_type: str, content: dict[str, Any] | bytes, signer: Session | None
    ) -> str:
        header = self._session.msg_header(msg_type)
        packed_content = content if isinstance(content, bytes) else self._pack(content)
        parts = [self._pack(header), self._pack({}), self._pack({}), packed_content]
        signature = b"" if signer is None else signer.sign(parts)
        self._send([DELIM, signature, *parts])
        return str(header["msg_id"])

    def _send(self, frames: list[bytes]) -> None:
        self._last_frames = frames
        self._socket.send_multipart(frames)

    def _pack(self, obj: Mapping[str, Any]) -> bytes:
        packed = self._session.pack(obj)
        assert isinstance(packed, bytes)
        return packed

    def _parse(self, frames: list[bytes]) -> RawReply:
        try:
            _identities, message_frames = self._session.feed_identities(frames)
            message = self._session.deserialize(message_frames)
        except (ValueError, KeyError):  # the kernel sent something unparsable
            return RawReply(None, None, {"frames": frames})
        parent_id = message.get("parent_header", {}).get("msg_id")
        return RawReply(message["header"]["msg_type"], parent_id, message["content"])


def _shell_address(info: Mapping[str, Any]) -> str:
    transport = info.get("transport", "tcp")
    if transport == "ipc":
        return f"ipc://{info['ip']}-{info['shell_port']}"
    return f"{transport}://{info['ip']}:{info['shell_port']}"


def _execute_content(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
