"""A description of the machine and software a run measured, for the report."""

from __future__ import annotations

import datetime
import platform
import sys
from dataclasses import dataclass
from importlib import metadata

import psutil

__all__ = ["Machine", "describe"]

PACKAGES = ("pyrepl3_kernel", "ipykernel", "jupyter_client", "pyzmq", "ipython")


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    logical_cores: int
    physical_cores: int | None
    ram_bytes: int
    system: str  # kernel name and release
    python: str  # version of the interpreter running the benchmark
    packages: tuple[tuple[str, str], ...]  # (distribution, version or "absent")
    date: str  # ISO 8601 with time zone, when the run started

    def lines(self) -> list[str]:
        cores = f"{self.logical_cores} logical"
        if self.physical_cores:
            cores += f", {self.physical_cores} physical"
        versions = ", ".join(f"{name} {version}" for name, version in self.packages)
        return [
            f"CPU: {self.cpu_model} ({cores} cores)",
            f"RAM: {self.ram_bytes / 2**30:.1f} GiB",
            f"OS: {self.system}",
            f"Python: {self.python}",
            f"Packages: {versions}",
            f"Date: {self.date}",
        ]


def describe() -> Machine:
    return Machine(
        cpu_model=_cpu_model(),
        logical_cores=psutil.cpu_count(logical=True) or 0,
        physical_cores=psutil.cpu_count(logical=False),
        ram_bytes=psutil.virtual_memory().total,
        system=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=f"{platform.python_version()} ({sys.executable})",
        packages=tuple((name, _version(name)) for name in PACKAGES),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        # Not Linux; platform gives a coarser answer below.
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
