"""Smoke test of `benchmarks/run.py`: a quick one-kernel run writes its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO / "benchmarks" / "run.py"
KERNEL = "pyrepl3"
METRICS = ("roundtrip", "startup_info")
# s; this run takes about 10 s on two cores. Past the limit the run gets SIGTERM,
# which makes it shut its kernels down, and STOP_TIMEOUT more to do so.
RUN_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0


def _has_kernelspec(name: str) -> bool:
    return name in KernelSpecManager().find_kernel_specs()


@pytest.mark.slow
@pytest.mark.skipif(
    not _has_kernelspec(KERNEL),
    reason=f"the {KERNEL} kernelspec is not installed; `pip install .` installs it",
)
def test_benchmark_quick_single_run_writes_metric_rows(tmp_path: Path) -> None:
    report = tmp_path / "results.md"
    env = dict(os.environ)
    # ipykernel stops capturing fds 1/2 in any kernel that inherits this.
    env.pop("PYTEST_CURRENT_TEST", None)
    command = [
        sys.executable,
        str(RUN_SCRIPT),
        "--quick",
        "--single",
        KERNEL,
        "--only",
        ",".join(METRICS),
        "--markdown",
        str(report),
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=STOP_TIMEOUT)
        pytest.fail(f"run.py took over {RUN_TIMEOUT:g} s; stderr:\n{stderr[-3000:]}")

    assert process.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr[-3000:]}"
    table = report.read_text(encoding="utf-8").splitlines()
    assert f"| metric | quantity | {KERNEL} |" in table
    for metric in METRICS:
        rows = [line for line in table if line.startswith(f"| {metric} | ")]
        assert rows, f"no row for {metric} in:\n" + "\n".join(table)
        assert not [row for row in rows if "error:" in row or "not run" in row], rows
