"""A worker started before the kernel's own heavy imports.

`python -m pyrepl3_kernel` calls `begin` first thing, so the worker imports
IPython while the kernel imports ipykernel; the pool then `take`s it and
sends its options once the configuration is known. Kernels launched some
other way (a stock ipykernel app given our kernel class) simply find
nothing here and start their first worker themselves.
"""

from __future__ import annotations

from .endpoint import PrivateDir
from .launch import LaunchedWorker, launch

__all__ = ["begin", "take"]

_early: tuple[PrivateDir, LaunchedWorker] | None = None


def begin(connection_file: str | None) -> None:
    """Start the first worker now (main thread, before any event loop)."""
    global _early
    private = PrivateDir()
    _early = (private, launch(private, connection_file))


def take() -> tuple[PrivateDir, LaunchedWorker] | None:
    """The early worker and its directory, once; None if there is none."""
    global _early
    early, _early = _early, None
    return early
