"""What the kernel really costs: CPU and memory of its whole process tree.

Read on demand (a `usage_request`), never sampled on a timer. The tree is
the kernel, its active worker, the warm spares and everything they started,
so JupyterLab's resource display shows the true cost.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

__all__ = ["UsageReader"]


class UsageReader:
    """Builds `usage_reply` content in the shape ipykernel uses (main loop)."""

    def __init__(self) -> None:
        # Kept between requests: psutil measures CPU since the previous call.
        self._processes: dict[int, psutil.Process] = {}

    def read(self) -> dict[str, Any]:
        # Imported on first use: it is not needed to start the kernel.
        import psutil

        me = psutil.Process()
        tree = [me, *me.children(recursive=True)]
        self._processes = {p.pid: self._processes.get(p.pid, p) for p in tree}
        cpu = memory = 0.0
        for process in self._processes.values():
            try:
                cpu += process.cpu_percent()
                memory += process.memory_full_info().pss
            except (psutil.Error, AttributeError):
                continue  # a process that just exited costs nothing any more
        content: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "kernel_cpu": cpu,
            "kernel_memory": memory,
            "cpu_count": psutil.cpu_count(logical=True),
            "host_virtual_memory": dict(psutil.virtual_memory()._asdict()),
            "processes": len(self._processes),
        }
        host_cpu = psutil.cpu_percent()
        if host_cpu:
            content["host_cpu_percent"] = host_cpu
        return content
