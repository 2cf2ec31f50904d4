"""The features people use every day, each checked on a real kernel over the protocol.

Payloads (`set_next_input`, the pager, `ask_exit`), comms both ways with binary
buffers, ipywidgets (display, updates from the frontend, callbacks, the `Output`
widget), matplotlib, rich reprs, the notebook-detection idioms libraries use, and
control-channel requests answered while a cell is busy.

Most tests share one kernel per module and keep to their own variable names; the
tests that end a session get a kernel of their own.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from kernel_driver import KernelDriver

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")

# Seconds a kernel may take to start and answer kernel_info; generous for slow CI.
STARTUP_TIMEOUT = 60.0

# Seconds for a reply or an expected IOPub message; cells here take well under one.
REPLY_TIMEOUT = 30.0

# Seconds shutdown may take before the kernel and its children count as leaked.
SHUTDOWN_TIMEOUT = 15.0

# Seconds within which a control request must be answered while a cell is busy.
CONTROL_DEADLINE = 1.0

# Seconds the busy cell sleeps; comfortably longer than the three control requests.
BUSY_CELL_SECONDS = 3

# The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A complete 1x1 grey PNG, small enough to inline in a cell.
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+k"
    "cQAAAABJRU5ErkJggg=="
)

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

_SCRUBBED_VARIABLES = ("PYTEST_CURRENT_TEST", "MPLBACKEND")

Message = dict[str, Any]


def _parent_id(msg: Message) -> str | None:
    parent_id: str | None = msg["parent_header"].get("msg_id")
    return parent_id


@dataclass
class Execution:
    """One execute request: its reply and the IOPub output parented to it."""

    msg_id: str
    reply: Message
    outputs: list[Message]  # arrival order; no status or execute_input messages

    @property
    def payload(self) -> list[dict[str, Any]]:
        payload: list[dict[str, Any]] = self.reply["content"]["payload"]
        return payload

    def of_type(self, msg_type: str) -> list[Message]:
        return [msg for msg in self.outputs if msg["msg_type"] == msg_type]

    def stdout(self) -> str:
        return "".join(
            msg["content"]["text"]
            for msg in self.of_type("stream")
            if msg["content"]["name"] == "stdout"
        )

    def result(self) -> dict[str, Any]:
        """Return the data of the single execute_result."""
        (msg,) = self.of_type("execute_result")
        data: dict[str, Any] = msg["content"]["data"]
        return data


@dataclass
class KernelUnderTest:
    """A started kernel and the only reader of its client's channels (test thread)."""

    manager: KernelManager
    client: BlockingKernelClient
    # Every IOPub message read so far, in arrival order; never trimmed.
    iopub: list[Message] = field(default_factory=list)
    # Replies read while waiting for another, keyed by (channel, parent msg_id).
    _early: dict[tuple[str, str | None], Message] = field(default_factory=dict)

    def send(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        channel: str = "shell",
        buffers: list[bytes] | None = None,
    ) -> str:
        msg = self.client.session.msg(msg_type, content or {})
        if buffers:
            msg["buffers"] = buffers
        getattr(self.client, f"{channel}_channel").send(msg)
        return str(msg["header"]["msg_id"])

    def reply(
        self, msg_id: str, *, channel: str = "shell", timeout: float = REPLY_TIMEOUT
    ) -> Message:
        """Wait for the reply to `msg_id` on `channel`; fail the test at `timeout`."""
        early = self._early.pop((channel, msg_id), None)
        if early is not None:
            return early
        get = getattr(self.client, f"get_{channel}_msg")
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg: Message = get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                pytest.fail(f"no {channel} reply to {msg_id} within {timeout} s")
            if _parent_id(msg) == msg_id:
                return msg
            self._early[(channel, _parent_id(msg))] = msg

    def wait_iopub(
        self, match: Callable[[Message], bool], *, timeout: float = REPLY_TIMEOUT
    ) -> Message:
        """Return the first IOPub message, read before or now, that `match` accepts."""
        for msg in self.iopub:
            if match(msg):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                msg = self.client.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                pytest.fail(f"no matching IOPub message within {timeout} s")
            self.iopub.append(msg)
            if match(msg):
                return msg

    def until_idle(
        self, msg_id: str, *, timeout: float = REPLY_TIMEOUT
    ) -> list[Message]:
        """Wait for the `idle` status of `msg_id`; return the output parented to it."""
        self.wait_iopub(
            lambda m: (
                _parent_id(m) == msg_id
                and m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
            ),
            timeout=timeout,
        )
        return [
            m
            for m in self.iopub
            if _parent_id(m) == msg_id
            and m["msg_type"] not in ("status", "execute_input")
        ]

    def execute(
        self, code: str, *, timeout: float = REPLY_TIMEOUT, expect_error: bool = False
    ) -> Execution:
        msg_id = self.send(
            "execute_request",
            {"code": textwrap.dedent(code), "silent": False, "store_history": True},
        )
        reply = self.reply(msg_id, timeout=timeout)
        execution = Execution(msg_id, reply, self.until_idle(msg_id, timeout=timeout))
        if not expect_error:
            assert reply["content"]["status"] == "ok", _failure_text(execution)
        return execution

    def comm_msg(
        self, comm_id: str, data: dict[str, Any], buffers: list[bytes] | None = None
    ) -> tuple[str, list[Message]]:
        """Send a comm_msg from the frontend; return its id and the output it caused."""
        content = {"comm_id": comm_id, "data": data}
        msg_id = self.send("comm_msg", content, buffers=buffers)
        return msg_id, self.until_idle(msg_id)


def _failure_text(execution: Execution) -> str:
    lines = [f"cell failed: {execution.reply['content']}"]
    for msg in execution.of_type("error"):
        lines.extend(msg["content"]["traceback"])
    return "\n".join(lines)


@contextlib.contextmanager
def _running_kernel(ipython_dir: Path) -> Iterator[KernelUnderTest]:
    """Start a kernel with its own profile; after use, check nothing outlives it."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_VARIABLES}
    env["IPYTHONDIR"] = str(ipython_dir)
    manager = KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(env=env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        yield KernelUnderTest(manager, client)
    finally:
        processes = _process_tree(getattr(manager.provisioner, "pid", None))
        client.stop_channels()
        manager.shutdown_kernel()
        _, alive = psutil.wait_procs(processes, timeout=SHUTDOWN_TIMEOUT)
        for process in alive:
            process.kill()
        assert not alive, f"processes left after shutdown: {alive}"


def _process_tree(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelUnderTest]:
    with _running_kernel(tmp_path_factory.mktemp("ipython")) as started:
        yield started


@pytest.fixture
def fresh_kernel(tmp_path: Path) -> Iterator[KernelUnderTest]:
    with _running_kernel(tmp_path / "ipython") as started:
        yield started


def test_set_next_input_becomes_payload(kernel: KernelUnderTest) -> None:
    execution = kernel.execute("get_ipython().set_next_input('planned = 1')")
    assert execution.payload == [
        {"source": "set_next_input", "text": "planned = 1", "replace": False}
    ]


def test_load_magic_replaces_cell_through_payload(
    kernel: KernelUnderTest, tmp_path: Path
) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text("loaded_answer = 42\n")
    execution = kernel.execute(f"%load {snippet}")
    (payload,) = execution.payload
    assert payload["source"] == "set_next_input"
    assert payload["replace"] is True
    assert "loaded_answer = 42" in payload["text"]


def test_question_mark_in_cell_pages_through_payload(kernel: KernelUnderTest) -> None:
    """ipykernel turns pager output into a payload; nothing goes to the streams."""
    execution = kernel.execute("len?")
    (payload,) = execution.payload
    assert payload["source"] == "page"
    assert "Return the number of items" in payload["data"]["text/plain"]
    assert isinstance(payload["start"], int)
    assert not execution.of_type("stream")


@pytest.mark.parametrize(
    ("code", "keepkernel"),
    [("exit()", False), ("exit(keep_kernel=True)", True)],
    ids=["exit", "keep-kernel"],
)
def test_exit_asks_frontend_to_exit_and_kernel_stays_up(
    fresh_kernel: KernelUnderTest, code: str, keepkernel: bool
) -> None:
    """Whether to shut down is the frontend's decision; the kernel keeps serving."""
    execution = fresh_kernel.execute(code)
    assert execution.payload == [{"source": "ask_exit", "keepkernel": keepkernel}]
    assert fresh_kernel.execute("print('still here')").stdout() == "still here\n"


_ECHO_TARGET = """
import comm

echo_log = []

def _open_echo(opened, open_msg):
    echo_log.append(('open', open_msg['content']['data'], open_msg['buffers']))

    @opened.on_msg
    def _echo(msg):
        buffers = [bytes(b) for b in msg['buffers']]
        echo_log.append(('msg', msg['content']['data'], buffers))
        reversed_buffers = [b[::-1] for b in buffers]
        opened.send({'echo': msg['content']['data']}, buffers=reversed_buffers)

    @opened.on_close
    def _closed(msg):
        echo_log.append(('close', msg['content']['data'], []))

comm.get_comm_manager().register_target('pyrepl3_test_echo', _open_echo)
"""


def test_comm_opened_by_frontend_gets_buffers_and_echoes_back(
    kernel: KernelUnderTest,
) -> None:
    kernel.execute(_ECHO_TARGET)
    comm_id = uuid.uuid4().hex

    open_id = kernel.send(
        "comm_open",
        {"comm_id": comm_id, "target_name": "pyrepl3_test_echo", "data": {"hi": 1}},
        buffers=[b"\x00open"],
    )
    kernel.until_idle(open_id)
    msg_id, outputs = kernel.comm_msg(comm_id, {"n": 2}, [b"abc", b"\xff\x00"])
    close_id = kernel.send("comm_close", {"comm_id": comm_id, "data": {"bye": 3}})
    kernel.until_idle(close_id)

    (echo,) = [m for m in outputs if m["msg_type"] == "comm_msg"]
    assert echo["content"]["comm_id"] == comm_id
    assert echo["content"]["data"] == {"echo": {"n": 2}}
    assert [bytes(b) for b in echo["buffers"]] == [b"cba", b"\x00\xff"]
    assert _parent_id(echo) == msg_id

    log = kernel.execute(
        "print([(kind, data, [bytes(b) for b in bufs])\n"
        "       for kind, data, bufs in echo_log])"
    ).stdout()
    expected = [
        ("open", {"hi": 1}, [b"\x00open"]),
        ("msg", {"n": 2}, [b"abc", b"\xff\x00"]),
        ("close", {"bye": 3}, []),
    ]
    assert log == f"{expected}\n"
    info = kernel.reply(kernel.send("comm_info_request"))["content"]
    assert comm_id not in info["comms"]


def test_comm_opened_by_kernel_reaches_frontend_and_receives(
    kernel: KernelUnderTest,
) -> None:
    execution = kernel.execute(
        """
        import comm
        kernel_inbox = []
        kernel_side = comm.create_comm(
            target_name='pyrepl3_test_kernel_side', data={'hello': 1}, buffers=[b'kern']
        )
        kernel_side.on_msg(
            lambda msg: kernel_inbox.append(
                (msg['content']['data'], [bytes(b) for b in msg['buffers']])
            )
        )
        """
    )
    (opened,) = execution.of_type("comm_open")
    assert opened["content"]["target_name"] == "pyrepl3_test_kernel_side"
    assert opened["content"]["data"] == {"hello": 1}
    assert [bytes(b) for b in opened["buffers"]] == [b"kern"]

    kernel.comm_msg(opened["content"]["comm_id"], {"ping": True}, [b"\x01\x02"])

    inbox = kernel.execute("print(kernel_inbox)").stdout()
    assert inbox == "[({'ping': True}, [b'\\x01\\x02'])]\n"


def _widget_comm(execution: Execution, model_name: str) -> str:
    """Return the comm id of the `model_name` widget the cell opened and displayed."""
    opened = [
        m
        for m in execution.of_type("comm_open")
        if m["content"]["target_name"] == "jupyter.widget"
        and m["content"]["data"]["state"]["_model_name"] == model_name
    ]
    assert len(opened) == 1, f"expected one {model_name} comm_open: {execution.outputs}"
    comm_id: str = opened[0]["content"]["comm_id"]
    views = [
        m
        for m in execution.of_type("display_data")
        if WIDGET_VIEW_MIME in m["content"]["data"]
    ]
    assert [m["content"]["data"][WIDGET_VIEW_MIME]["model_id"] for m in views] == [
        comm_id
    ]
    return comm_id


def _state_updates(messages: list[Message], comm_id: str) -> list[dict[str, Any]]:
    return [
        m["content"]["data"]["state"]
        for m in messages
        if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == comm_id
        and m["content"]["data"].get("method") == "update"
    ]


def test_int_slider_display_opens_widget_comm(kernel: KernelUnderTest) -> None:
    execution = kernel.execute(
        "import ipywidgets\nshown_slider = ipywidgets.IntSlider(value=3)\n"
        "display(shown_slider)"
    )
    comm_id = _widget_comm(execution, "IntSliderModel")
    (opened,) = [
        m for m in execution.of_type("comm_open") if m["content"]["comm_id"] == comm_id
    ]
    assert opened["content"]["data"]["state"]["value"] == 3
    assert "version" in opened["metadata"]


def test_widget_value_set_by_frontend_between_cells_is_seen(
    kernel: KernelUnderTest,
) -> None:
    execution = kernel.execute(
        "import ipywidgets\nidle_slider = ipywidgets.IntSlider()\ndisplay(idle_slider)"
    )
    comm_id = _widget_comm(execution, "IntSliderModel")

    kernel.comm_msg(
        comm_id, {"method": "update", "state": {"value": 7}, "buffer_paths": []}
    )

    assert kernel.execute("idle_slider.value").result()["text/plain"] == "7"


def test_widget_observer_output_is_parented_to_comm_msg(
    kernel: KernelUnderTest,
) -> None:
    execution = kernel.execute(
        """
        import ipywidgets
        watched_slider = ipywidgets.IntSlider()
        watched_slider.observe(
            lambda change: print('value is now', change['new']), names='value'
        )
        display(watched_slider)
        """
    )
    comm_id = _widget_comm(execution, "IntSliderModel")

    msg_id, outputs = kernel.comm_msg(
        comm_id, {"method": "update", "state": {"value": 9}, "buffer_paths": []}
    )

    streams = [m for m in outputs if m["msg_type"] == "stream"]
    assert "".join(m["content"]["text"] for m in streams) == "value is now 9\n"
    assert all(_parent_id(m) == msg_id for m in streams)


def test_output_widget_captures_cell_output(kernel: KernelUnderTest) -> None:
    """The frontend routes output by the msg_id the widget holds while capturing."""
    execution = kernel.execute(
        "import ipywidgets\ncapture_area = ipywidgets.Output()\ndisplay(capture_area)"
    )
    comm_id = _widget_comm(execution, "OutputModel")

    capture = kernel.execute("with capture_area:\n    print('captured text')")

    assert capture.stdout() == "captured text\n"
    assert _state_updates(capture.outputs, comm_id) == [
        {"msg_id": capture.msg_id},
        {"msg_id": ""},
    ]
    kinds = [
        "set"
        if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
        else m["msg_type"]
        for m in capture.outputs
        if m["msg_type"] in ("comm_msg", "stream")
    ]
    assert kinds == ["set", "stream", "set"]


def _png_bytes(data: dict[str, Any]) -> bytes:
    return base64.b64decode(data["image/png"])


def test_matplotlib_show_displays_png_by_default(kernel: KernelUnderTest) -> None:
    execution = kernel.execute(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
    )
    (shown,) = execution.of_type("display_data")
    assert _png_bytes(shown["content"]["data"]).startswith(PNG_SIGNATURE)
    assert not execution.of_type("execute_result")


def test_matplotlib_inline_magic_shows_open_figure_at_cell_end(
    kernel: KernelUnderTest,
) -> None:
    kernel.execute("%matplotlib inline")
    execution = kernel.execute("import matplotlib.pyplot as plt\nplt.plot([3, 1]);")
    (shown,) = execution.of_type("display_data")
    assert _png_bytes(shown["content"]["data"]).startswith(PNG_SIGNATURE)


def test_pandas_dataframe_renders_html_table(kernel: KernelUnderTest) -> None:
    data = kernel.execute(
        "import pandas as pd\npd.DataFrame({'col_a': [1, 2], 'col_b': ['x', 'y']})"
    ).result()
    assert "<table" in data["text/html"]
    assert "col_a" in data["text/html"]
    assert "col_b" in data["text/plain"]


_REPR_CASES = [
    pytest.param(
        "_repr_html_", "'<em>html repr</em>'", "text/html", "<em>html repr</em>"
    ),
    pytest.param(
        "_repr_markdown_", "'**markdown repr**'", "text/markdown", "**markdown repr**"
    ),
    pytest.param("_repr_latex_", "r'$\\alpha$'", "text/latex", "$\\alpha$"),
    pytest.param(
        "_repr_png_",
        f"__import__('base64').b64decode('{TINY_PNG_B64}')",
        "image/png",
        TINY_PNG_B64,
    ),
]


@pytest.mark.parametrize(("method", "value", "mime", "expected"), _REPR_CASES)
def test_repr_method_gives_its_mime_type(
    kernel: KernelUnderTest, method: str, value: str, mime: str, expected: str
) -> None:
    code = f"class Shown:\n    def {method}(self):\n        return {value}\n\nShown()"
    data = kernel.execute(code).result()
    assert data[mime] == expected
    assert "text/plain" in data


def test_repr_mimebundle_gives_every_type(kernel: KernelUnderTest) -> None:
    data = kernel.execute(
        """
        class Bundled:
            def _repr_mimebundle_(self, include=None, exclude=None):
                return {
                    'application/vnd.pyrepl3.test+json': {'answer': 42},
                    'text/plain': 'bundled plain',
                }

        Bundled()
        """
    ).result()
    assert data["application/vnd.pyrepl3.test+json"] == {"answer": 42}
    assert data["text/plain"] == "bundled plain"


def test_ipython_display_hook_replaces_the_result(kernel: KernelUnderTest) -> None:
    execution = kernel.execute(
        """
        from IPython.display import display

        class SelfShown:
            def _ipython_display_(self):
                display({'text/plain': 'shown by itself'}, raw=True)

        SelfShown()
        """
    )
    assert not execution.of_type("execute_result")
    (shown,) = execution.of_type("display_data")
    assert shown["content"]["data"] == {"text/plain": "shown by itself"}


def test_shell_has_kernel_naming_the_current_parent(kernel: KernelUnderTest) -> None:
    """ipywidgets' Output widget reads the running cell's id from here."""
    execution = kernel.execute(
        "print(get_ipython().kernel is not None)\n"
        "print(get_ipython().kernel.get_parent()['header']['msg_id'])"
    )
    assert execution.stdout() == f"True\n{execution.msg_id}\n"


def test_shell_passes_notebook_detection_idioms(kernel: KernelUnderTest) -> None:
    execution = kernel.execute(
        """
        shell = get_ipython()
        print('IPKernelApp' in shell.config)
        print(any(cls.__name__ == 'ZMQInteractiveShell' for cls in type(shell).__mro__))
        """
    )
    assert execution.stdout() == "True\nTrue\n"


def test_tqdm_auto_picks_notebook_progress_bar(kernel: KernelUnderTest) -> None:
    has_tqdm = kernel.execute(
        "import importlib.util\nprint(importlib.util.find_spec('tqdm') is not None)"
    ).stdout()
    if has_tqdm != "True\n":
        pytest.skip("tqdm is not installed in the kernel's environment")
    execution = kernel.execute(
        "import tqdm.auto, tqdm.notebook\n"
        "print(issubclass(tqdm.auto.tqdm, tqdm.notebook.tqdm))"
    )
    assert execution.stdout() == "True\n"


def test_control_requests_are_answered_while_a_cell_runs(
    kernel: KernelUnderTest,
) -> None:
    cell_id = kernel.send(
        "execute_request",
        {
            "code": "import time\n"
            "print('sleeping', flush=True)\n"
            f"time.sleep({BUSY_CELL_SECONDS})",
            "silent": False,
        },
    )
    kernel.wait_iopub(
        lambda m: (
            _parent_id(m) == cell_id
            and m["msg_type"] == "stream"
            and "sleeping" in m["content"]["text"]
        )
    )
    started = time.monotonic()

    for msg_type in ("kernel_info_request", "comm_info_request", "usage_request"):
        sent = time.monotonic()
        reply = kernel.reply(
            kernel.send(msg_type, channel="control"),
            channel="control",
            timeout=CONTROL_DEADLINE,
        )
        assert reply["header"]["msg_type"] == msg_type.replace("_request", "_reply")
        # usage_reply, outside the spec, carries no status field at all.
        assert reply["content"].get("status", "ok") == "ok", reply["content"]
        assert time.monotonic() - sent < CONTROL_DEADLINE
    answered = time.monotonic() - started

    assert kernel.reply(cell_id)["content"]["status"] == "ok"
    assert answered < BUSY_CELL_SECONDS, "control replies waited for the cell to end"
    kernel.until_idle(cell_id)


def test_who_lists_only_the_users_variables(driver: KernelDriver) -> None:
    """In, Out and their aliases stay hidden, as in ipykernel."""
    cell = driver.execute("only_mine = 1\n%who_ls")

    assert cell.status == "ok", cell.output_text()
    shown = cell.displays[-1]["data"]["text/plain"]
    assert "'only_mine'" in shown
    for hidden in ("'In'", "'Out'", "'_ih'", "'_oh'", "'_dh'"):
        assert hidden not in shown
