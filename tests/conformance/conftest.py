"""Fixtures for the conformance tests: one real kernel per module, isolated profile.

The kernel under test is named by `PYREPL3_TEST_KERNEL` (default `pyrepl3`); running
the suite with `PYREPL3_TEST_KERNEL=python3` checks the tests themselves against
ipykernel. Every kernel gets a fresh `IPYTHONDIR`, so history and startup files never
leak between runs or into the developer's own profile.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")

# True when the suite runs against ipykernel to validate the tests themselves.
IS_IPYKERNEL = KERNEL_NAME == "python3"

# Seconds a kernel may take to start and answer kernel_info; generous for slow CI.
STARTUP_TIMEOUT = 60.0

# Seconds any single reply may take; the requests here are all cheap.
REPLY_TIMEOUT = 15.0

# Seconds shutdown may take before the kernel and its children count as leaked.
SHUTDOWN_TIMEOUT = 15.0

# Variables that would make the kernel behave unlike a user's: pytest's marker turns
# off fd capture in ipykernel's streams, and a backend set here would hide the
# kernel's own matplotlib default.
_SCRUBBED_VARIABLES = ("PYTEST_CURRENT_TEST", "MPLBACKEND")


def kernel_environment(ipython_dir: Path) -> dict[str, str]:
    """Return the environment a test kernel starts with: ours, isolated profile."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_VARIABLES}
    env["IPYTHONDIR"] = str(ipython_dir)
    return env


@dataclass
class KernelSession:
    """A running kernel with a blocking client; used from the test's thread only."""

    manager: KernelManager
    client: BlockingKernelClient
    # Replies that arrived while waiting for another one, keyed by parent msg_id.
    _stray: dict[str, dict[str, Any]] = field(default_factory=dict)

    def send(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        channel: str = "shell",
    ) -> str:
        """Send a request on `channel` (`shell` or `control`) and return its msg_id."""
        msg = self.client.session.msg(msg_type, content or {})
        getattr(self.client, f"{channel}_channel").send(msg)
        return str(msg["header"]["msg_id"])

    def reply(
        self, msg_id: str, *, channel: str = "shell", timeout: float = REPLY_TIMEOUT
    ) -> dict[str, Any]:
        """Wait for the reply whose parent is `msg_id`; fail the test at `timeout`."""
        if msg_id in self._stray:
            return self._stray.pop(msg_id)
        get = getattr(self.client, f"get_{channel}_msg")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg: dict[str, Any] = get(timeout=max(remaining, 0.0))
            except queue.Empty:
                pytest.fail(f"no {channel} reply to {msg_id} within {timeout} s")
            parent_id = msg["parent_header"].get("msg_id")
            if parent_id == msg_id:
                return msg
            self._stray[parent_id] = msg

    def request(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        channel: str = "shell",
        timeout: float = REPLY_TIMEOUT,
    ) -> dict[str, Any]:
        """Send a request and return its reply message."""
        msg_id = self.send(msg_type, content, channel=channel)
        return self.reply(msg_id, channel=channel, timeout=timeout)

    def execute(
        self, code: str, *, timeout: float = REPLY_TIMEOUT, **options: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run `code`; return the reply and the cell's IOPub output, in order.

        Output is everything parented to the request between `busy` and `idle`,
        except `execute_input`. The test fails if the cell ends in an error.
        """
        content = {"code": code, "silent": False, "store_history": True}
        content.update(options)
        msg_id = self.send("execute_request", content)
        reply = self.reply(msg_id, timeout=timeout)
        outputs = self.iopub_until_idle(msg_id, timeout=timeout)
        assert reply["content"]["status"] == "ok", _describe_failure(reply, outputs)
        return reply, outputs

    def iopub_until_idle(
        self, msg_id: str, *, timeout: float = REPLY_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Collect IOPub messages parented to `msg_id` until its `idle` status."""
        deadline = time.monotonic() + timeout
        outputs: list[dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self.client.get_iopub_msg(timeout=max(remaining, 0.0))
            except queue.Empty:
                pytest.fail(f"no idle status for {msg_id} within {timeout} s")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    return outputs
                continue
            if msg["msg_type"] != "execute_input":
                outputs.append(msg)


def _describe_failure(reply: dict[str, Any], outputs: list[dict[str, Any]]) -> str:
    tracebacks = [
        "\n".join(m["content"]["traceback"])
        for m in outputs
        if m["msg_type"] == "error"
    ]
    return f"cell failed: {reply['content']}\n" + "\n".join(tracebacks)


def _descendants(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelSession]:
    """A kernel shared by one module; shut down and checked for leftovers after it."""
    ipython_dir = tmp_path_factory.mktemp("ipython")
    manager = KernelManager(kernel_name=KERNEL_NAME)
    manager.start_kernel(env=kernel_environment(ipython_dir))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=STARTUP_TIMEOUT)
        yield KernelSession(manager, client)
    finally:
        processes = _descendants(getattr(manager.provisioner, "pid", None))
        client.stop_channels()
        manager.shutdown_kernel()
        _, alive = psutil.wait_procs(processes, timeout=SHUTDOWN_TIMEOUT)
        for process in alive:
            process.kill()
        assert not alive, f"processes left after shutdown: {alive}"
