"""The community's kernel conformance suite (`jupyter_kernel_test`) run on our kernel.

`KernelTests` starts the kernel itself in `setUpClass` from `os.environ`, so the
isolated `IPYTHONDIR` is put into the environment just for that start and the
previous values are restored at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, ClassVar

# jupyter_kernel_test ships no type information.
import jupyter_kernel_test  # type: ignore[import-untyped]
import psutil

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")

# True when the suite runs against ipykernel to validate the tests themselves.
IS_IPYKERNEL = KERNEL_NAME == "python3"

# Seconds shutdown may take before the kernel and its children count as leaked.
SHUTDOWN_TIMEOUT = 15.0

# Variables that would make the kernel behave unlike a user's: pytest's marker turns
# off fd capture in ipykernel's streams, and a backend set here would hide the
# kernel's own matplotlib default.
_SCRUBBED_VARIABLES = ("PYTEST_CURRENT_TEST", "MPLBACKEND")


# The base class is untyped (see the import), hence the ignore.
class PyRepl3KernelTests(jupyter_kernel_test.KernelTests):  # type: ignore[misc]
    """Fills every sample the suite reads, so each of its tests runs."""

    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys\nprint('to stderr', file=sys.stderr)"

    # The suite compares the match set exactly, so each prefix has one completion.
    completion_samples: ClassVar[list[dict[str, Any]]] = [
        {"text": "isinstanc", "matches": {"isinstance"}},
        {"text": "ZeroDivisionErr", "matches": {"ZeroDivisionError"}},
    ]
    complete_code_samples: ClassVar[list[str]] = [
        "total = 1 + 2",
        "print(total)",
        "class Box:\n    size = 3\n\n",
        "%time total = 4",
    ]
    incomplete_code_samples: ClassVar[list[str]] = [
        "while total < 10:",
        "values = [1,\n    2,",
        "def pending(a):\n    if a:",
    ]
    invalid_code_samples: ClassVar[list[str]] = ["total = )", "1 +* 2 )", "return ]"]

    code_page_something = "print?"
    code_generate_error = "raise ValueError('deliberate failure')"

    # `code_history_pattern` must match exactly one distinct entry of these.
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "6 * 7", "result": "42"},
        {"code": "'ab' * 2", "result": "'abab'"},
        {
            "code": "from IPython.display import HTML\nHTML('<i>rich</i>')",
            "mime": "text/html",
            "result": "<i>rich</i>",
        },
    ]
    code_history_pattern = "6 ? 7"
    # A range request for the running session by its number gets entries labelled
    # session 0 from IPython's history manager, so ipykernel fails the suite's check
    # that the reply echoes the session asked for. Our kernel must echo it.
    supported_history_operations = (
        ("tail", "search") if IS_IPYKERNEL else ("tail", "range", "search")
    )

    code_display_data: ClassVar[list[dict[str, str]]] = [
        {
            "code": "from IPython.display import HTML, display\n"
            "display(HTML('<b>shown</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display\n"
            "display(Math(r'\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_inspect_sample = "print"
    code_clear_output = "from IPython.display import clear_output\nclear_output()"

    _ipython_dir: ClassVar[str]
    _saved_environment: ClassVar[dict[str, str | None]]

    @classmethod
    def setUpClass(cls) -> None:
        cls._ipython_dir = tempfile.mkdtemp(prefix="pyrepl3-kernel-test-")
        overrides: dict[str, str | None] = dict.fromkeys(_SCRUBBED_VARIABLES)
        overrides["IPYTHONDIR"] = cls._ipython_dir
        saved = {name: os.environ.get(name) for name in overrides}
        _apply_environment(overrides)
        try:
            super().setUpClass()
        finally:
            _apply_environment(saved)

    @classmethod
    def tearDownClass(cls) -> None:
        processes = _process_tree(getattr(cls.km.provisioner, "pid", None))
        try:
            super().tearDownClass()
            _, alive = psutil.wait_procs(processes, timeout=SHUTDOWN_TIMEOUT)
            for process in alive:
                process.kill()
            assert not alive, f"processes left after shutdown: {alive}"
        finally:
            shutil.rmtree(cls._ipython_dir, ignore_errors=True)


def _apply_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _process_tree(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
