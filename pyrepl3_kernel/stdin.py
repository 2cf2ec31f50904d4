"""Routing of `input()` between workers and the frontend's stdin channel.

A worker's `input_request` goes out on the kernel's stdin socket, parented
to the cell that asked and addressed to the frontend that sent that cell.
Replies are awaited on an asyncio shadow of the same socket (no timed
polling) and matched by the `msg_id` of the request they answer; a reply
nobody waits for any more (the cell ended, the prompt was interrupted) is
dropped, so it can never answer a later prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session as JupyterSession

from .protocol.messages import Kind, WorkerMessage
from .requests import check_frames
from .session.session import Session

__all__ = ["StdinRouter"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Prompt:
    session: Session  # the worker that waits
    input_id: str  # its name for the wait
    req: str  # the execution that asked


class StdinRouter:
    """Forwards prompts and routes replies (main loop only)."""

    def __init__(self, signer: JupyterSession, stdin_socket: zmq.Socket[bytes]) -> None:
        self._signer = signer
        self._socket = stdin_socket
        self._shadow = zmq.asyncio.Socket.shadow(stdin_socket.underlying)
        self._prompts: dict[str, _Prompt] = {}  # input_request msg_id -> waiter
        self.idents: dict[str, Any] = {}  # execute msg_id -> frontend's routing id

    def __repr__(self) -> str:
        return f"<StdinRouter open_prompts={len(self._prompts)}>"

    def forward(
        self, session: Session, req: str, cell: dict[str, Any], message: WorkerMessage
    ) -> None:
        """Send a worker's prompt to the frontend that sent the cell `cell`."""
        content = {
            "prompt": str(message.content.get("prompt", "")),
            "password": bool(message.content.get("password", False)),
        }
        sent = self._signer.send(
            self._socket,
            "input_request",
            content,
            parent=cell,
            ident=self.idents.get(str(cell.get("msg_id", ""))),
        )
        if sent is not None:
            input_id = str(message.extra.get("input_id", ""))
            self._prompts[sent["header"]["msg_id"]] = _Prompt(session, input_id, req)

    def cancel(self, input_id: str) -> None:
        """The worker stopped waiting (interrupt): forget the prompt."""
        for key, prompt in list(self._prompts.items()):
            if prompt.input_id == input_id:
                del self._prompts[key]

    def cell_ended(self, req: str) -> None:
        """Prompts of an ended cell can no longer be answered."""
        for key, prompt in list(self._prompts.items()):
            if prompt.req == req:
                del self._prompts[key]

    async def run(self) -> None:
        """Route each input_reply until the socket closes."""
        while True:
            try:
                frames = await self._shadow.recv_multipart(copy=False)
            except zmq.ZMQError:
                return
            self._route(frames)

    def _route(self, frames: list[Any]) -> None:
        problem = check_frames(self._signer, frames)
        if problem is not None:
            logger.warning("refused stdin message reason=%s", problem.reason)
            return
        try:
            _, body = self._signer.feed_identities(frames, copy=False)
            reply = self._signer.deserialize(body, content=True, copy=False)
        except Exception as exc:  # any malformed frame: drop it, say why, go on
            logger.warning(
                "refused stdin message reason=%s: %s", type(exc).__name__, exc
            )
            return
        msg_type = reply.get("header", {}).get("msg_type")
        content = reply.get("content")
        if msg_type != "input_reply" or not isinstance(content, dict):
            logger.warning(
                "refused stdin message type=%r: not an input_reply", msg_type
            )
            return
        value = content.get("value")
        if not isinstance(value, str):
            logger.warning("refused input_reply: value is %s", type(value).__name__)
            return
        parent = reply.get("parent_header")
        parent_id = parent.get("msg_id", "") if isinstance(parent, dict) else ""
        if not isinstance(parent_id, str):
            logger.warning("refused input_reply: parent msg_id is not a string")
            return
        if not parent_id and self._prompts:
            # Some clients (jupyter_client's `input`) send no parent: the
            # reply answers the oldest open prompt, as a terminal would.
            parent_id = next(iter(self._prompts))
        prompt = self._prompts.pop(parent_id, None)
        if prompt is None:
            logger.debug("dropped stale input_reply parent=%s", parent_id)
            return
        prompt.session.post_nowait(
            Kind.INPUT_REPLY, {"input_id": prompt.input_id, "value": value}
        )
