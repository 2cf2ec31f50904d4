"""`%pyrepl3`: ask the kernel for a fresh worker, or for its counters."""

from __future__ import annotations

from collections.abc import Callable

from IPython.core.magic import Magics, line_magic, magics_class

from ..protocol.messages import Kind, WorkerMessage

__all__ = ["PyRepl3Magics"]

USAGE = """Usage:
  %pyrepl3 restart   replace this worker with a fresh one once the cell ends
                     (all variables are cleared)
  %pyrepl3 stats     show the kernel's counters (interrupts, replacements;
                     enable more with --SessionPool.metrics=True)
"""


@magics_class
class PyRepl3Magics(Magics):
    """Line magics that send a `kernel_action` to the kernel."""

    def __init__(self, shell: object, post: Callable[[WorkerMessage], None]) -> None:
        super().__init__(shell)
        self._post = post

    @line_magic  # type: ignore[untyped-decorator]  # IPython's decorator is untyped
    def pyrepl3(self, line: str) -> None:
        action = line.strip()
        if action not in ("restart", "stats"):
            print(USAGE)
            return
        parent = self.shell.get_parent().get("header", {})
        if action == "restart":
            print(
                "A fresh worker takes over when this cell ends;"
                " variables will be cleared."
            )
        self._post(WorkerMessage(Kind.KERNEL_ACTION, {"action": action}, parent=parent))
