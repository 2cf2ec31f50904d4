"""Where a worker's channel lives: a private directory, or loopback TCP.

The kernel binds; the worker connects. Sockets sit in a directory only the
user can enter (mode 0700), each socket file mode 0600. Where the path would
be too long for a Unix socket (107 bytes), or ipc is missing, the channel
falls back to tcp on 127.0.0.1; the HMAC key still guards it.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from typing import Any

import zmq
import zmq.asyncio

__all__ = ["PrivateDir", "bind_worker_socket"]

logger = logging.getLogger(__name__)

MAX_IPC_PATH = 107  # bytes in sockaddr_un.sun_path, minus the terminating NUL


class PrivateDir:
    """A 0700 temporary directory for worker sockets, removed by `remove`."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="pyrepl3-")
        os.chmod(self.path, 0o700)
        self._names = itertools.count(1)

    def __repr__(self) -> str:
        return f"<PrivateDir {self.path}>"

    def next_socket_path(self) -> str:
        return os.path.join(self.path, f"w{next(self._names)}.sock")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def bind_worker_socket(
    context: zmq.Context[Any], private: PrivateDir
) -> tuple[zmq.asyncio.Socket, str, str | None]:
    """Bind a PAIR for one worker; returns (socket, endpoint, socket path or None).

    A PAIR talks to exactly one peer: a second connection is refused rather
    than given a share of the messages (a DEALER would deal them round-robin).

    The socket is an asyncio socket from the start (it binds to a loop only
    when first awaited, so this works before any loop runs), and it is the
    only Python object owning the libzmq socket: closing it closes it once.
    """
    socket = zmq.asyncio.Socket(context, zmq.PAIR)
    socket.linger = 0
    socket.sndhwm = 0  # output credit bounds memory, not the high-water mark
    socket.rcvhwm = 0
    path = private.next_socket_path()
    if zmq.has("ipc") and len(path.encode()) <= MAX_IPC_PATH:
        endpoint = f"ipc://{path}"
        socket.bind(endpoint)
        os.chmod(path, 0o600)
        return socket, endpoint, path
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    logger.info("worker channel on tcp loopback port=%s reason=ipc path too long", port)
    return socket, f"tcp://127.0.0.1:{port}", None
