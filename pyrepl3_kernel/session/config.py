"""What of the kernel's configuration travels to its workers.

The worker builds its shell from the IPython profile itself; the kernel adds
its own configuration on top (command-line options, pyrepl3_kernel_config.py),
which crosses the channel as JSON. Values JSON cannot carry are left out.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["worker_config"]


def worker_config(config: Any) -> dict[str, Any]:
    """The JSON-safe part of a traitlets `Config`, section by section."""
    safe: dict[str, Any] = {}
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        kept = {}
        for key, value in values.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            kept[key] = value
        if kept:
            safe[section] = kept
    return safe
