"""Replies checked field by field against the Jupyter messaging spec (protocol 5.x).

Each reply first passes jupyter_kernel_test's JSON schema for its type where one
exists, then the checks here pin the values a frontend relies on: cursor spans,
language metadata, history tuples, the control-channel usage reply.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# jupyter_kernel_test ships no type information.
from jupyter_kernel_test.msgspec_v5 import (  # type: ignore[import-untyped]
    validate_message,
)

if TYPE_CHECKING:
    from conftest import KernelSession

# True when the suite runs against ipykernel to validate the tests themselves.
IS_IPYKERNEL = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3") == "python3"

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

_NOT_FOR_IPYKERNEL = pytest.mark.skipif(
    IS_IPYKERNEL, reason="ipykernel names itself 'ipython' and advertises both features"
)


def _plain(text: str) -> str:
    return _ANSI_ESCAPE.sub("", text)


def _checked(reply: dict[str, Any], msg_type: str) -> dict[str, Any]:
    """Validate `reply` against the schema for `msg_type`; return its content."""
    validate_message(reply, msg_type)
    assert reply["content"]["status"] == "ok", reply["content"]
    content: dict[str, Any] = reply["content"]
    return content


@pytest.fixture(scope="module")
def kernel_info(kernel: KernelSession) -> dict[str, Any]:
    return _checked(kernel.request("kernel_info_request"), "kernel_info_reply")


def test_kernel_info_reply_has_protocol_and_banner(kernel_info: dict[str, Any]) -> None:
    assert re.fullmatch(r"5\.\d+", kernel_info["protocol_version"])
    assert isinstance(kernel_info["implementation"], str)
    assert kernel_info["implementation"]
    assert isinstance(kernel_info["implementation_version"], str)
    assert isinstance(kernel_info["banner"], str)
    assert kernel_info["banner"].strip()


def test_kernel_info_reply_describes_python_for_notebooks(
    kernel_info: dict[str, Any],
) -> None:
    info = kernel_info["language_info"]
    assert info["name"] == "python"
    assert re.match(r"3\.\d+\.\d+", info["version"])
    assert info["mimetype"] == "text/x-python"
    assert info["file_extension"] == ".py"
    assert info["pygments_lexer"] == "ipython3"
    assert info["codemirror_mode"] == {"name": "ipython", "version": 3}
    assert info["nbconvert_exporter"] == "python"


def test_kernel_info_reply_lists_supported_features(
    kernel_info: dict[str, Any],
) -> None:
    features = kernel_info["supported_features"]
    assert isinstance(features, list)
    assert all(isinstance(feature, str) for feature in features)


@_NOT_FOR_IPYKERNEL
def test_kernel_info_reply_names_pyrepl3_implementation(
    kernel_info: dict[str, Any],
) -> None:
    assert kernel_info["implementation"] == "pyrepl3"


@_NOT_FOR_IPYKERNEL
def test_kernel_info_reply_advertises_no_subshells_or_debugger(
    kernel_info: dict[str, Any],
) -> None:
    """JupyterLab routes comms to subshells and shows a debugger when advertised."""
    features = kernel_info["supported_features"]
    assert "kernel subshells" not in features
    assert "debugger" not in features
    assert kernel_info.get("debugger", False) is False


@pytest.fixture(scope="module")
def completion_scope(
    kernel: KernelSession, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Names the completion cases need, defined in the kernel; returns a data folder."""
    folder = tmp_path_factory.mktemp("completion")
    (folder / "sample_data_file.txt").write_text("data\n")
    kernel.execute("import os\nshape_dict = {'key_alpha': 1, 'key_beta': 2}")
    return folder


_COMPLETION_CASES = [
    pytest.param("import o", "import os", id="module-name"),
    pytest.param("os.pa", "os.path", id="attribute"),
    pytest.param("shape_dict['key_a", "shape_dict['key_alpha", id="dict-key"),
    pytest.param('s = "é😀"; os.pa', 's = "é😀"; os.path', id="after-non-ascii"),
]


def _complete(kernel: KernelSession, code: str, cursor_pos: int) -> dict[str, Any]:
    reply = kernel.request("complete_request", {"code": code, "cursor_pos": cursor_pos})
    return _checked(reply, "complete_reply")


def _completions(content: dict[str, Any], code: str) -> list[str]:
    """Return `code` with each match applied over the reply's cursor span."""
    start, end = content["cursor_start"], content["cursor_end"]
    return [code[:start] + match + code[end:] for match in content["matches"]]


@pytest.mark.usefixtures("completion_scope")
@pytest.mark.parametrize(("code", "completed"), _COMPLETION_CASES)
def test_complete_reply_span_replaces_the_partial_token(
    kernel: KernelSession, code: str, completed: str
) -> None:
    """Cursor positions count unicode code points, as protocol 5.2 requires."""
    content = _complete(kernel, code, len(code))
    assert content["cursor_end"] == len(code)
    assert content["cursor_start"] <= content["cursor_end"]
    assert completed in _completions(content, code)


def test_complete_reply_completes_a_path(
    kernel: KernelSession, completion_scope: Path
) -> None:
    code = f"open('{completion_scope}/sample_data_fi"
    content = _complete(kernel, code, len(code))
    assert content["cursor_end"] == len(code)
    expected = f"open('{completion_scope}/sample_data_file.txt"
    assert any(text.startswith(expected) for text in _completions(content, code))


@pytest.mark.usefixtures("completion_scope")
def test_complete_reply_span_ends_at_cursor_inside_the_line(
    kernel: KernelSession,
) -> None:
    code = "os.pa + 1"
    content = _complete(kernel, code, 5)
    assert (content["cursor_start"], content["cursor_end"]) == (3, 5)
    assert "path" in content["matches"]


@pytest.mark.usefixtures("completion_scope")
def test_complete_reply_carries_experimental_types(kernel: KernelSession) -> None:
    """JupyterLab reads `_jupyter_types_experimental` to show a kind per match."""
    content = _complete(kernel, "os.pa", 5)
    types = content["metadata"]["_jupyter_types_experimental"]
    assert isinstance(types, list)
    assert {entry["text"] for entry in types} == set(content["matches"])
    for entry in types:
        assert {"start", "end", "text", "type"} <= set(entry)
        assert entry["end"] == 5
    kinds = {entry["text"]: entry["type"] for entry in types}
    assert kinds["path"] == "module"


@pytest.fixture(scope="module")
def inspected_function(kernel: KernelSession) -> str:
    source = (
        "def shaped_fn(a, b=2):\n"
        '    """Add two numbers for the inspect test."""\n'
        "    return a + b  # body marker\n"
    )
    kernel.execute(source)
    return "shaped_fn"


def _inspect(
    kernel: KernelSession, code: str, detail_level: int, cursor_pos: int | None = None
) -> dict[str, Any]:
    content = {
        "code": code,
        "cursor_pos": len(code) if cursor_pos is None else cursor_pos,
        "detail_level": detail_level,
    }
    return _checked(kernel.request("inspect_request", content), "inspect_reply")


def test_inspect_reply_level_0_gives_signature_and_docstring(
    kernel: KernelSession, inspected_function: str
) -> None:
    content = _inspect(kernel, inspected_function, 0)
    assert content["found"] is True
    assert isinstance(content["metadata"], dict)
    text = _plain(content["data"]["text/plain"])
    assert "shaped_fn(a, b=2)" in text
    assert "Add two numbers for the inspect test." in text
    assert "body marker" not in text


def test_inspect_reply_level_1_adds_source(
    kernel: KernelSession, inspected_function: str
) -> None:
    content = _inspect(kernel, inspected_function, 1)
    assert content["found"] is True
    assert "return a + b  # body marker" in _plain(content["data"]["text/plain"])


def test_inspect_reply_uses_the_name_under_the_cursor(
    kernel: KernelSession, inspected_function: str
) -> None:
    code = f"{inspected_function}(1, len(x))"
    content = _inspect(kernel, code, 0, cursor_pos=3)
    assert content["found"] is True
    assert "Add two numbers" in _plain(content["data"]["text/plain"])


@pytest.mark.parametrize("detail_level", [0, 1])
def test_inspect_reply_reports_unknown_name_as_not_found(
    kernel: KernelSession, detail_level: int
) -> None:
    content = _inspect(kernel, "no_such_name_in_namespace", detail_level)
    assert content["found"] is False
    assert not content["data"].get("text/plain")


@pytest.mark.parametrize(
    ("code", "status", "indent"),
    [
        pytest.param("x = 1", "complete", None, id="statement"),
        pytest.param("def f():\n    return 1\n", "complete", None, id="block-closed"),
        pytest.param("%time x = 1", "complete", None, id="magic"),
        pytest.param("for i in range(3):", "incomplete", "    ", id="block-opened"),
        pytest.param("if True:\n    y = (1,", "incomplete", None, id="open-bracket"),
        pytest.param("1 +* 2 )", "invalid", None, id="syntax-error"),
    ],
)
def test_is_complete_reply_classifies_code(
    kernel: KernelSession, code: str, status: str, indent: str | None
) -> None:
    reply = kernel.request("is_complete_request", {"code": code})
    validate_message(reply, "is_complete_reply")
    content = reply["content"]
    assert content["status"] == status
    if status == "incomplete":
        assert isinstance(content["indent"], str)
        assert content["indent"].strip() == ""
    if indent is not None:
        assert content["indent"] == indent


_HISTORY_CELLS = (
    "history_marker_value = 20",
    "history_marker_value + 22",
    "print('between')",
    "history_marker_value + 22",
)


@pytest.fixture(scope="module")
def history_session(kernel: KernelSession) -> int:
    """Run the history cells; return the execution count of the first one."""
    counts = [
        kernel.execute(code)[0]["content"]["execution_count"] for code in _HISTORY_CELLS
    ]
    assert counts == list(range(counts[0], counts[0] + len(counts)))
    return int(counts[0])


def _history(kernel: KernelSession, **content: Any) -> list[list[Any]]:
    content.setdefault("raw", True)
    content.setdefault("output", False)
    reply = _checked(kernel.request("history_request", content), "history_reply")
    history: list[list[Any]] = reply["history"]
    return history


def test_history_reply_tail_gives_latest_cells(
    kernel: KernelSession, history_session: int
) -> None:
    entries = _history(kernel, hist_access_type="tail", n=2)
    assert [entry[2] for entry in entries] == list(_HISTORY_CELLS[-2:])
    first_line = history_session + len(_HISTORY_CELLS) - 2
    assert [entry[1] for entry in entries] == [first_line, first_line + 1]
    assert all(isinstance(entry[0], int) for entry in entries)


def test_history_reply_tail_with_output_pairs_input_and_output(
    kernel: KernelSession, history_session: int
) -> None:
    entries = _history(kernel, hist_access_type="tail", n=2, output=True)
    assert [entry[2][0] for entry in entries] == list(_HISTORY_CELLS[-2:])
    assert all(len(entry[2]) == 2 for entry in entries)


def test_history_reply_range_of_current_session_has_outputs(
    kernel: KernelSession, history_session: int
) -> None:
    """Session 0 means the running session, whose outputs IPython keeps in memory."""
    entries = _history(
        kernel,
        hist_access_type="range",
        session=0,
        start=history_session,
        stop=history_session + 2,
        output=True,
    )
    assert [entry[1] for entry in entries] == [history_session, history_session + 1]
    assert [entry[2][0] for entry in entries] == list(_HISTORY_CELLS[:2])
    assert entries[1][2][1] == "42"


def test_history_reply_search_matches_glob_pattern(
    kernel: KernelSession, history_session: int
) -> None:
    entries = _history(
        kernel, hist_access_type="search", pattern="history_marker_value*"
    )
    assert [entry[2] for entry in entries] == [
        code for code in _HISTORY_CELLS if code.startswith("history_marker_value")
    ]


def test_history_reply_search_unique_drops_repeats(
    kernel: KernelSession, history_session: int
) -> None:
    entries = _history(
        kernel,
        hist_access_type="search",
        pattern="history_marker_value +*",
        unique=True,
    )
    assert [entry[2] for entry in entries] == ["history_marker_value + 22"]


def test_history_reply_search_n_keeps_latest_matches(
    kernel: KernelSession, history_session: int
) -> None:
    entries = _history(
        kernel, hist_access_type="search", pattern="history_marker_value*", n=1
    )
    assert len(entries) == 1
    assert entries[0][1] == history_session + len(_HISTORY_CELLS) - 1


def test_comm_info_reply_lists_kernel_comms_by_target(kernel: KernelSession) -> None:
    kernel.execute(
        "import comm\nshape_comm = comm.create_comm(target_name='shape_probe', data={})"
    )
    comm_id = kernel.execute("print(shape_comm.comm_id, end='')")[1][0]["content"][
        "text"
    ]

    everything = _checked(kernel.request("comm_info_request"), "comm_info_reply")
    assert everything["comms"][comm_id] == {"target_name": "shape_probe"}

    filtered = _checked(
        kernel.request("comm_info_request", {"target_name": "shape_probe"}),
        "comm_info_reply",
    )
    assert filtered["comms"] == {comm_id: {"target_name": "shape_probe"}}

    other = _checked(
        kernel.request("comm_info_request", {"target_name": "no_such_target"}),
        "comm_info_reply",
    )
    assert other["comms"] == {}
    kernel.execute("shape_comm.close()")


def test_usage_reply_on_control_reports_process_and_host(kernel: KernelSession) -> None:
    reply = kernel.request("usage_request", channel="control")
    assert reply["header"]["msg_type"] == "usage_reply"
    content = reply["content"]
    expected = {
        "kernel_cpu",
        "kernel_memory",
        "cpu_count",
        "host_virtual_memory",
        "pid",
        "hostname",
    }
    assert expected <= set(content)
    assert isinstance(content["pid"], int)
    assert content["pid"] > 0
    assert isinstance(content["hostname"], str)
    assert isinstance(content["kernel_cpu"], int | float)
    assert content["kernel_memory"] > 0
    assert content["cpu_count"] >= 1
    assert content["host_virtual_memory"]["total"] > 0
