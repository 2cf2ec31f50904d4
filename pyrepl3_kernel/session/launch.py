"""Start one worker: a private endpoint, a fresh key, the process itself.

`launch` is synchronous so the kernel can call it before its event loop
exists (see `pyrepl3_kernel.__main__`), as well as from the loop's thread.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from .endpoint import PrivateDir, bind_worker_socket
from .process import WorkerProcess, spawn

__all__ = ["LaunchedWorker", "launch"]

KEY_BYTES = 32  # HMAC-SHA256 key length: the hash's own block of entropy


@dataclass(slots=True)
class LaunchedWorker:
    """A started worker and the bound socket that only it may talk to."""

    process: WorkerProcess
    socket: zmq.asyncio.Socket
    key: bytes
    endpoint: str
    socket_path: str | None

    def send_options(self, options: dict[str, Any]) -> None:
        """Give the worker its options plus where to connect and how to sign."""
        self.process.send_options(
            dict(options, endpoint=self.endpoint, key=self.key.hex())
        )


def launch(private: PrivateDir, connection_file: str | None = None) -> LaunchedWorker:
    """Bind an endpoint, make a key, spawn the worker; options follow separately.

    Spawning before the options are known lets the worker do its imports
    while the kernel does its own.
    """
    socket, endpoint, path = bind_worker_socket(zmq.Context.instance(), private)
    key = secrets.token_bytes(KEY_BYTES)
    process = spawn(connection_file)
    return LaunchedWorker(process, socket, key, endpoint, path)
