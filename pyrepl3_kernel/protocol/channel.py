"""The signed channel between the kernel and one worker.

Framing is ZeroMQ multipart; signing, replay detection and serialising come
from ``jupyter_client.session.Session`` keyed with the worker's own random
key. Both ends run the channel on an asyncio loop (the kernel's main loop,
the worker's I/O thread), so a send is awaited and never blocks a thread.

Every string that leaves through `pack` is made encodable here, at one
boundary: lone surrogates (from badly decoded UTF-16, `chr(0xd83d)`, ...)
become U+FFFD, because a JSON packer that meets one later would raise.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session as JupyterSession

from ..errors import BadSignatureError, ProtocolError
from .messages import Kind, WorkerMessage

__all__ = ["WorkerChannel", "encodable", "pack", "unpack"]

logger = logging.getLogger(__name__)

_KINDS = {kind.value: kind for kind in Kind}


def encodable(text: str) -> str:
    """Return `text` with lone surrogates replaced, so it encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A UTF-16 round trip joins well-formed pairs and replaces the rest.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def pack(obj: Any) -> bytes:
    """Serialise `obj` as UTF-8 JSON; never fails on what user code printed."""
    try:
        text = json.dumps(
            obj, default=json_default, ensure_ascii=False, allow_nan=False
        )
    except ValueError:
        # NaN or infinity in display metadata: JSON has no spelling for them.
        text = json.dumps(obj, default=json_default, ensure_ascii=False)
    return encodable(text).encode("utf-8")


def unpack(data: bytes) -> Any:
    """Parse UTF-8 JSON produced by `pack`."""
    return json.loads(data)


def make_signer(key: bytes) -> JupyterSession:
    """A jupyter_client Session that signs with `key` (HMAC-SHA256)."""
    return JupyterSession(
        key=key,
        signature_scheme="hmac-sha256",
        pack=pack,
        unpack=unpack,
        check_pid=False,
        username="pyrepl3",
    )


class WorkerChannel:
    """Signed, typed messages over one asyncio ZeroMQ socket.

    Only the task that owns the channel's loop may call `send` and `recv`;
    there is exactly one reader per channel.
    """

    def __init__(self, socket: zmq.asyncio.Socket, key: bytes) -> None:
        self._socket = socket
        self._signer = make_signer(key)

    def encode(self, message: WorkerMessage) -> list[bytes]:
        """Sign `message` into multipart frames, checked whole before any is sent."""
        metadata: dict[str, Any] = dict(message.extra)
        if message.req:
            metadata["req"] = message.req
        msg = self._signer.msg(
            message.kind.value,
            message.content,
            parent=message.parent,
            metadata=metadata,
        )
        frames = self._signer.serialize(msg)
        # As in Jupyter messages, buffers follow the signed frames.
        frames.extend(message.buffers)
        return [frame if isinstance(frame, bytes) else bytes(frame) for frame in frames]

    async def send(self, message: WorkerMessage) -> int:
        """Send `message`; returns the number of bytes it took on the wire."""
        frames = self.encode(message)
        try:
            await self._socket.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            raise ProtocolError(f"cannot send {message.kind} to peer: {exc}") from exc
        return sum(len(frame) for frame in frames)

    async def recv(self) -> WorkerMessage:
        """Receive the next message.

        Raises:
            BadSignatureError: the frames are not signed with this channel's key,
                or replay an earlier message; the message was dropped.
            ProtocolError: the frames do not form a message of a known kind.
        """
        try:
            frames = await self._socket.recv_multipart(copy=True)
        except zmq.ZMQError as exc:
            raise ProtocolError(f"cannot receive from peer: {exc}") from exc
        return self.decode(frames)

    def decode(self, frames: list[bytes]) -> WorkerMessage:
        """Verify and parse one multipart message (see `recv` for errors)."""
        nbytes = sum(len(frame) for frame in frames)
        try:
            _, body = self._signer.feed_identities(frames, copy=True)
            msg = self._signer.deserialize(body, content=True, copy=True)
        except ValueError as exc:
            text = str(exc)
            if "Signature" in text:
                raise BadSignatureError(f"dropped worker message: {text}") from exc
            raise ProtocolError(f"dropped worker message: {text}") from exc
        except Exception as exc:  # malformed frames can fail in many ways
            raise ProtocolError(f"dropped undecodable worker message: {exc!r}") from exc
        header = msg.get("header")
        msg_type = header.get("msg_type") if isinstance(header, dict) else None
        kind = _KINDS.get(msg_type) if isinstance(msg_type, str) else None
        content = msg.get("content")
        metadata = msg.get("metadata")
        if (
            kind is None
            or not isinstance(content, dict)
            or not isinstance(metadata, dict)
        ):
            raise ProtocolError(
                f"dropped worker message of unknown shape: {msg_type!r}"
            )
        parent = msg.get("parent_header")
        req = metadata.pop("req", "")
        return WorkerMessage(
            kind=kind,
            content=content,
            parent=parent if isinstance(parent, dict) else {},
            req=req if isinstance(req, str) else "",
            buffers=tuple(bytes(b) for b in msg.get("buffers", [])),
            extra=metadata,
            nbytes=nbytes,
        )
