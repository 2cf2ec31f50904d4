"""Exceptions raised by the benchmark harness.

BenchmarkError            root; the runner turns any of these into "error: ..."
├── WaitTimeoutError      an expected message did not arrive before its deadline
├── KernelDiedError       the kernel process exited while a probe waited on it
└── ProbeCheckError       the kernel answered, but not with what the probe expects
"""

from __future__ import annotations

__all__ = ["BenchmarkError", "KernelDiedError", "ProbeCheckError", "WaitTimeoutError"]


class BenchmarkError(Exception):
    """Root of the harness's own errors."""


class WaitTimeoutError(BenchmarkError):
    """A message the probe waits for did not arrive in time."""


class KernelDiedError(BenchmarkError):
    """The kernel process exited; `returncode` is negative for a signal."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


class ProbeCheckError(BenchmarkError):
    """A reply or output differs from what the probe's cell must produce."""
