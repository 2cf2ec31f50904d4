"""`tests/data/sample.ipynb` run top to bottom by nbclient on the kernel under test.

nbclient is how papermill, nbconvert `--execute` and CI notebook runs drive a kernel:
it needs execute replies with the right status, outputs parented to their cells and
a clean shutdown at the end.
"""

from __future__ import annotations

import base64
import importlib.util
import os
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.ipynb"

# Seconds one cell may run; the sample's slowest cell imports matplotlib.
CELL_TIMEOUT = 60

# Seconds the kernel may take to start and answer kernel_info.
STARTUP_TIMEOUT = 60

# Seconds shutdown may take before the kernel and its children count as leaked.
SHUTDOWN_TIMEOUT = 15.0

# The first bytes of every PNG file.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_SCRUBBED_VARIABLES = ("PYTEST_CURRENT_TEST", "MPLBACKEND")


def _kernel_environment(ipython_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_VARIABLES}
    env["IPYTHONDIR"] = str(ipython_dir)
    return env


class _ProcessWatch:
    """Records the kernel's process tree when nbclient has started it."""

    def __init__(self, client: NotebookClient) -> None:
        self.client = client
        self.processes: list[psutil.Process] = []

    def __call__(self, **_: Any) -> None:
        assert self.client.km is not None
        pid = getattr(self.client.km.provisioner, "pid", None)
        assert pid is not None, "the kernel manager has no local kernel process"
        root = psutil.Process(pid)
        self.processes = [root, *root.children(recursive=True)]

    def assert_all_gone(self) -> None:
        assert self.processes, "the notebook-start hook never ran"
        _, alive = psutil.wait_procs(self.processes, timeout=SHUTDOWN_TIMEOUT)
        for process in alive:
            process.kill()
        assert not alive, f"processes left after the notebook ran: {alive}"


def _run(notebook: NotebookNode, tmp_path: Path) -> NotebookNode:
    """Execute `notebook` in place with nbclient; check the kernel is gone after."""
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        startup_timeout=STARTUP_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    watch = _ProcessWatch(client)
    client.on_notebook_start = watch
    ipython_dir = tmp_path / "ipython"
    ipython_dir.mkdir()
    try:
        executed: NotebookNode = client.execute(env=_kernel_environment(ipython_dir))
        return executed
    finally:
        watch.assert_all_gone()


def _read_sample() -> NotebookNode:
    """Read a fresh copy of the sample; tests may change it in place."""
    read = nbformat.read  # nbformat's reader carries no annotations
    notebook: NotebookNode = read(SAMPLE, as_version=4)  # type: ignore[no-untyped-call]
    return notebook


def _cell(notebook: NotebookNode, cell_id: str) -> NotebookNode:
    for cell in notebook.cells:
        if cell.get("id") == cell_id:
            found: NotebookNode = cell
            return found
    raise AssertionError(f"the sample notebook has no cell with id {cell_id!r}")


def _stream_text(cell: NotebookNode, name: str = "stdout") -> str:
    return "".join(
        output["text"]
        for output in cell.outputs
        if output["output_type"] == "stream" and output["name"] == name
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> NotebookNode:
    notebook = _read_sample()
    return _run(notebook, tmp_path_factory.mktemp("sample"))


def test_sample_notebook_runs_every_code_cell_in_order(executed: NotebookNode) -> None:
    counts = [
        cell.execution_count for cell in executed.cells if cell.cell_type == "code"
    ]
    assert counts == list(range(1, len(counts) + 1))


def test_sample_notebook_records_python_language_info(executed: NotebookNode) -> None:
    info = executed.metadata.language_info
    assert info["name"] == "python"
    assert info["file_extension"] == ".py"


def test_sample_notebook_print_becomes_stdout_stream(executed: NotebookNode) -> None:
    cell = _cell(executed, "print")
    assert _stream_text(cell) == "hello from the sample notebook\n"
    assert [output["output_type"] for output in cell.outputs] == ["stream"]


def test_sample_notebook_html_display_is_kept(executed: NotebookNode) -> None:
    (output,) = _cell(executed, "html").outputs
    assert output["output_type"] == "display_data"
    assert output["data"]["text/html"] == "<p><b>rich</b> output</p>"
    assert "text/plain" in output["data"]


def test_sample_notebook_last_expression_is_execute_result(
    executed: NotebookNode,
) -> None:
    cell = _cell(executed, "result")
    (output,) = cell.outputs
    assert output["output_type"] == "execute_result"
    assert output["data"]["text/plain"] == "45"
    assert output["execution_count"] == cell.execution_count


def test_sample_notebook_tagged_error_is_recorded_and_run_goes_on(
    executed: NotebookNode,
) -> None:
    (output,) = _cell(executed, "error").outputs
    assert output["output_type"] == "error"
    assert output["ename"] == "ValueError"
    assert output["evalue"] == "raised on purpose"
    assert any("raised on purpose" in line for line in output["traceback"])
    assert (
        _stream_text(_cell(executed, "after-error"))
        == "still running after the error\n"
    )


def test_sample_notebook_plot_is_inline_png(executed: NotebookNode) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    outputs = _cell(executed, "plot").outputs
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1, outputs
    assert images[0]["output_type"] == "display_data"
    assert base64.b64decode(images[0]["data"]["image/png"]).startswith(_PNG_SIGNATURE)


def test_untagged_error_stops_the_notebook(tmp_path: Path) -> None:
    """Without `raises-exception` the error reply must make nbclient stop there."""
    notebook = _read_sample()
    _cell(notebook, "error").metadata.pop("tags")

    with pytest.raises(CellExecutionError, match="raised on purpose"):
        _run(notebook, tmp_path)

    assert _cell(notebook, "error").outputs[0]["ename"] == "ValueError"
    assert _cell(notebook, "after-error").execution_count is None
