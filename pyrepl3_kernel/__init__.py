"""pyrepl3_kernel: a Jupyter kernel for Python that runs cells in a supervised worker.

The kernel process speaks the Jupyter protocol and never runs user code; a
worker process does, under a `SessionPool` that interrupts, replaces and
watches it. See the README for usage and configuration.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    BadSignatureError,
    ProtocolError,
    PyRepl3Error,
    SessionClosedError,
    WorkerDiedError,
    WorkerStartError,
)

__all__ = [
    "BadSignatureError",
    "ProtocolError",
    "PyRepl3Error",
    "SessionClosedError",
    "WorkerDiedError",
    "WorkerStartError",
    "__version__",
]
