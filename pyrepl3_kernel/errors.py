"""Every exception this package raises on purpose.

The tree::

    PyRepl3Error
    ├── ProtocolError            a worker message that cannot be understood
    │   └── BadSignatureError    a worker message whose HMAC does not verify
    ├── SessionClosedError       the session was shut down while a request waited
    ├── WorkerDiedError          the worker process exited while a request waited
    └── WorkerStartError         workers keep dying before they become ready

Lower-layer errors (zmq, OS) are translated at the protocol boundary with
``raise ... from exc``; callers above it only see this tree.
"""

from __future__ import annotations

__all__ = [
    "BadSignatureError",
    "ProtocolError",
    "PyRepl3Error",
    "SessionClosedError",
    "WorkerDiedError",
    "WorkerStartError",
]


class PyRepl3Error(Exception):
    """Root of every error raised by pyrepl3_kernel."""


class ProtocolError(PyRepl3Error):
    """A message on the worker channel is malformed or unexpected."""


class BadSignatureError(ProtocolError):
    """A message on the worker channel failed HMAC verification."""


class SessionClosedError(PyRepl3Error):
    """The session was closed while a request was waiting on it."""


class WorkerDiedError(PyRepl3Error):
    """The worker process exited while requests were pending.

    Attributes:
        returncode: the process's exit status; negative for a signal.
        description: a sentence a user can read, e.g. "killed by SIGSEGV".
        crash_text: the last lines the worker wrote to its crash stream.
    """

    def __init__(self, returncode: int | None, description: str, crash_text: str = ""):
        super().__init__(description)
        self.returncode = returncode
        self.description = description
        self.crash_text = crash_text


class WorkerStartError(PyRepl3Error):
    """Workers keep dying before they report ready; the pool stopped trying."""
