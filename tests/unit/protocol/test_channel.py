"""Tests of `pyrepl3_kernel.protocol.channel`: the signed worker channel and `pack`.

Channels talk over a real pair of `zmq.asyncio` DEALER sockets on an inproc
endpoint, one pair per test, closed before the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import zmq
import zmq.asyncio
from jupyter_client.session import DELIM

from pyrepl3_kernel.errors import BadSignatureError, ProtocolError
from pyrepl3_kernel.protocol.channel import (
    WorkerChannel,
    encodable,
    make_signer,
    pack,
    unpack,
)
from pyrepl3_kernel.protocol.messages import Kind, WorkerMessage

TEST_TIMEOUT = 10.0  # s: a hung test fails here instead of at pytest-timeout's limit
KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"

PARENT = {
    "msg_id": "a1b2",
    "msg_type": "execute_request",
    "session": "s1",
    "username": "user",
    "version": "5.4",
}

_endpoints = itertools.count(1)


class Pair:
    """Two channels on connected sockets: `kernel` binds, `worker` connects."""

    def __init__(
        self,
        kernel: WorkerChannel,
        worker: WorkerChannel,
        kernel_socket: zmq.asyncio.Socket,
        worker_socket: zmq.asyncio.Socket,
    ) -> None:
        self.kernel = kernel
        self.worker = worker
        self.kernel_socket = kernel_socket
        self.worker_socket = worker_socket

    async def recv(self) -> WorkerMessage:
        return await asyncio.wait_for(self.kernel.recv(), TEST_TIMEOUT)


@contextlib.asynccontextmanager
async def _pair(worker_key: bytes = KEY) -> AsyncIterator[Pair]:
    context = zmq.asyncio.Context()
    endpoint = f"inproc://channel-{next(_endpoints)}"
    kernel_socket = context.socket(zmq.DEALER)
    worker_socket = context.socket(zmq.DEALER)
    try:
        kernel_socket.bind(endpoint)
        worker_socket.connect(endpoint)
        yield Pair(
            WorkerChannel(kernel_socket, KEY),
            WorkerChannel(worker_socket, worker_key),
            kernel_socket,
            worker_socket,
        )
    finally:
        kernel_socket.close(linger=0)
        worker_socket.close(linger=0)
        context.term()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await coro

    asyncio.run(bounded())


def _message(kind: Kind, **fields: Any) -> WorkerMessage:
    content = {"kind": kind.value, "n": 1, "text": "héllo", "nested": {"xs": [1, 2]}}
    defaults: dict[str, Any] = {
        "parent": PARENT,
        "req": "r7",
        "buffers": (b"\x00binary\xff", b"second"),
        "extra": {"input_id": "i9"},
    }
    return WorkerMessage(kind, content, **(defaults | fields))


def _signed(
    header: bytes,
    parent: bytes = b"{}",
    metadata: bytes = b"{}",
    content: bytes = b"{}",
) -> list[bytes]:
    """Frames correctly signed with KEY around arbitrary parts."""
    parts = [header, parent, metadata, content]
    return [DELIM, make_signer(KEY).sign(parts), *parts]


def _assert_same(got: WorkerMessage, sent: WorkerMessage) -> None:
    assert (got.kind, got.content, got.parent, got.req, got.extra, got.buffers) == (
        sent.kind,
        sent.content,
        sent.parent,
        sent.req,
        sent.extra,
        sent.buffers,
    )


@pytest.mark.parametrize("kind", list(Kind), ids=[k.value for k in Kind])
def test_channel_round_trips_every_kind(kind: Kind) -> None:
    async def main() -> None:
        async with _pair() as pair:
            sent = _message(kind)

            nbytes = await pair.worker.send(sent)
            got = await pair.recv()

            _assert_same(got, sent)
            assert got.nbytes == nbytes
            assert nbytes == sum(len(frame) for frame in pair.worker.encode(sent))

    _run(main())


def test_channel_round_trips_both_ways_without_req_or_parent() -> None:
    async def main() -> None:
        async with _pair() as pair:
            down = WorkerMessage(Kind.CREDIT, {"nbytes": 10})
            up = WorkerMessage(Kind.READY, {"pid": 12, "execution_count": 0})

            await pair.kernel.send(down)
            got_down = await asyncio.wait_for(pair.worker.recv(), TEST_TIMEOUT)
            await pair.worker.send(up)
            got_up = await pair.recv()

            _assert_same(got_down, down)
            _assert_same(got_up, up)

    _run(main())


def test_channel_round_trips_empty_and_large_buffers() -> None:
    async def main() -> None:
        async with _pair() as pair:
            buffers = (b"\x00\x01\x02", b"", bytes(range(256)) * 64)
            sent = _message(Kind.COMM_MSG, buffers=buffers)

            await pair.worker.send(sent)
            got = await pair.recv()

            assert got.buffers == buffers
            _assert_same(got, sent)

    _run(main())


def test_channel_rejects_message_signed_with_another_key() -> None:
    async def main() -> None:
        async with _pair(worker_key=OTHER_KEY) as pair:
            await pair.worker.send(_message(Kind.REPLY))

            with pytest.raises(BadSignatureError, match="Invalid Signature"):
                await pair.recv()

    _run(main())


def test_channel_rejects_replayed_frames() -> None:
    async def main() -> None:
        async with _pair() as pair:
            sent = _message(Kind.REPLY)
            frames = pair.worker.encode(sent)

            await pair.worker_socket.send_multipart(frames)
            await pair.worker_socket.send_multipart(frames)

            _assert_same(await pair.recv(), sent)
            with pytest.raises(BadSignatureError, match="Duplicate Signature"):
                await pair.recv()

    _run(main())


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([b"garbage"], id="no-delimiter"),
        pytest.param([DELIM], id="delimiter-only"),
        pytest.param([DELIM, b"sig", b"{}"], id="too-few-frames"),
        pytest.param([DELIM, b"", b"{}", b"{}", b"{}", b"{}"], id="unsigned"),
        pytest.param(_signed(b"{not json"), id="signed-bad-json"),
        pytest.param(_signed(b'{"msg_id": "x", "version": "5.4"}'), id="no-msg-type"),
        pytest.param(_signed(b"[1, 2]"), id="header-not-object"),
        pytest.param(
            _signed(b'{"msg_id": "x", "msg_type": ["stream"], "version": "5.4"}'),
            id="unhashable-msg-type",
        ),
        pytest.param(
            _signed(
                b'{"msg_id": "x", "msg_type": "reply", "version": "5.4"}',
                content=b"[1]",
            ),
            id="content-not-object",
        ),
        pytest.param(
            _signed(
                b'{"msg_id": "x", "msg_type": "reply", "version": "5.4"}',
                content=b"\xff",
            ),
            id="content-not-utf8",
        ),
    ],
)
def test_channel_turns_garbage_into_protocol_error(frames: list[bytes]) -> None:
    async def main() -> None:
        async with _pair() as pair:
            await pair.worker_socket.send_multipart(frames)

            with pytest.raises(ProtocolError, match="dropped"):
                await pair.recv()

            sent = _message(Kind.REPLY)
            await pair.worker.send(sent)
            _assert_same(await pair.recv(), sent)  # the channel still works

    _run(main())


def test_channel_rejects_unknown_kind() -> None:
    async def main() -> None:
        async with _pair() as pair:
            signer = make_signer(KEY)
            frames = signer.serialize(signer.msg("bogus_kind", {"x": 1}))

            await pair.worker_socket.send_multipart(frames)

            with pytest.raises(ProtocolError, match="unknown shape: 'bogus_kind'"):
                await pair.recv()

    _run(main())


def test_channel_send_on_closed_socket_raises_protocol_error() -> None:
    async def main() -> None:
        async with _pair() as pair:
            pair.worker_socket.close(linger=0)

            with pytest.raises(ProtocolError, match="cannot send reply to peer"):
                await pair.worker.send(_message(Kind.REPLY))

    _run(main())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("emoji 😀 and CJK 漢字 and é", "emoji 😀 and CJK 漢字 and é"),
        ("lone high \ud83d end", "lone high \ufffd end"),
        ("lone low \ude00 end", "lone low \ufffd end"),
        ("pair as two code points \ud83d\ude00", "pair as two code points 😀"),
        ("\udcff escaped byte", "\ufffd escaped byte"),
    ],
)
def test_pack_makes_text_encodable_and_keeps_valid_text(
    text: str, expected: str
) -> None:
    packed = pack({"text": text, text: "as a key"})

    assert unpack(packed) == {"text": expected, expected: "as a key"}
    assert encodable(text) == expected


def test_pack_writes_utf8_not_ascii_escapes() -> None:
    assert pack({"t": "漢字"}) == '{"t": "漢字"}'.encode()


def test_pack_survives_nan_and_infinity() -> None:
    packed = pack({"nan": math.nan, "inf": math.inf, "ok": 1.5})

    value = unpack(packed)
    assert math.isnan(value["nan"])
    assert value["inf"] == math.inf
    assert value["ok"] == 1.5


def test_channel_carries_lone_surrogates_and_nan_as_valid_messages() -> None:
    async def main() -> None:
        async with _pair() as pair:
            content = {"name": "stdout", "text": "a\ud83db 😀"}
            sent = WorkerMessage(
                Kind.STREAM, content, parent=PARENT, extra={"jmeta": {"v": math.nan}}
            )

            await pair.worker.send(sent)
            got = await pair.recv()

            assert got.content == {"name": "stdout", "text": "a\ufffdb 😀"}
            assert math.isnan(got.extra["jmeta"]["v"])

    _run(main())


def test_unpack_reads_what_json_writes() -> None:
    data = {"a": [1, "two", None, True], "b": {"c": 2.5}}

    assert unpack(json.dumps(data).encode()) == data
