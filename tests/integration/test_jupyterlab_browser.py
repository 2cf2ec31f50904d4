"""JupyterLab in headless Chromium opens a PyREPL3 notebook and drives a live slider.

This is the path a person takes: the launcher tile, the kernel status in the
toolbar and status bar, a cell whose output is an ipywidgets slider, keys pressed
on the slider, and a later cell that reads the value the browser sent back over
the widget's comm. The server and the browser run from temporary directories so
nothing in the user's Jupyter setup is read or written, and nothing phones home:
news, update checks and the PyPI extension manager are off in the server, and
Chromium runs without background networking.

Playwright drives Debian's Chromium through `executable_path`; it never downloads
a browser of its own. The test skips where Chromium, Playwright or JupyterLab is
missing. `PYREPL3_TEST_KERNEL=python3` runs the same steps on ipykernel, which
helps tell a kernel fault from a frontend one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import psutil
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

KERNEL_NAME = os.environ.get("PYREPL3_TEST_KERNEL", "pyrepl3")

# Seconds for the whole test, fixtures included: a cold JupyterLab bundle load and
# a kernel start take 15-30 s on a busy two-core machine; the rest is headroom.
TEST_TIMEOUT = 240

# Seconds for the server to print its URL after the process starts.
SERVER_START_TIMEOUT = 60.0

# Seconds between attempts to reach the server while it binds its port, which
# happens on the first turn of its event loop, just after it logs its URL.
BIND_POLL_INTERVAL = 0.1

# Seconds one REST call to the server may take; kernel shutdown is the slowest.
HTTP_TIMEOUT = 30.0

# Seconds for JupyterLab's page to load and draw the launcher.
LAB_LOAD_TIMEOUT = 90.0

# Seconds from clicking the launcher tile until the kernel reports idle.
KERNEL_READY_TIMEOUT = 60.0

# Seconds for a cell's output, or a widget's redraw, to appear.
CELL_TIMEOUT = 30.0

# Seconds the server gets to stop after SIGTERM before its group is killed.
SERVER_STOP_TIMEOUT = 20.0

# Seconds every process the test started may take to exit after teardown.
EXIT_TIMEOUT = 10.0

SLIDER_START = 3
SLIDER_PRESSES = 4  # each ArrowRight moves the handle one step of 1
SLIDER_FROM_KERNEL = 42

# Debian's Chromium, headless, with every feature that reaches the network on its
# own switched off; Playwright adds --headless itself for headless=True.
_CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# A variable set for the server and the browser: every process either starts
# inherits it, so one left running is found even after it was re-parented.
_MARKER = "PYREPL3_BROWSER_TEST_RUN"

# Debian's package installs /usr/bin/chromium; other distributions use the
# second name.
_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The same control in both ipywidgets 8 (noUiSlider) and 7 (jQuery UI).
_SLIDER_HANDLE = ".noUi-handle, .ui-slider-handle"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _private_dirs(tmp_path: Path) -> dict[str, Path]:
    """Empty Jupyter and IPython dirs, plus lab settings that keep the page quiet."""
    dirs = {
        name: tmp_path / name
        for name in ("root", "config", "data", "runtime", "ipython")
    }
    for path in dirs.values():
        path.mkdir()
    # Without this the question about fetching news pops up over the notebook.
    settings = dirs["config"] / "lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return dirs


def _server_env(dirs: dict[str, Path], marker: str) -> dict[str, str]:
    """This environment minus every JUPYTER_ variable, pointed at `dirs`.

    The kernelspec stays visible: sys.prefix/share/jupyter is on the data path
    whatever JUPYTER_DATA_DIR says, and the test asks the server to confirm it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
    env.pop("PYTEST_CURRENT_TEST", None)  # ipykernel stops capturing fds on seeing it
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        **{_MARKER: marker},
    )
    return env


def _server_command(port: int, token: str, root: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",  # fail loudly rather than serve elsewhere
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",  # CI runs as root
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # the default one queries PyPI
    ]


@dataclass
class _LabServer:
    """A `python -m jupyterlab` in its own session, and what it has logged so far.

    `log` is appended by the reader thread only; the test thread reads it.
    """

    process: subprocess.Popen[str]
    url: str
    token: str
    ready: threading.Event = field(default_factory=threading.Event, repr=False)
    log: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def start(cls, tmp_path: Path) -> tuple[_LabServer, threading.Thread]:
        """Start the server and the thread that reads its output."""
        dirs = _private_dirs(tmp_path)
        port = _free_port()
        token = secrets.token_hex(16)
        process = subprocess.Popen(
            _server_command(port, token, dirs["root"]),
            env=_server_env(dirs, marker=str(tmp_path)),
            cwd=dirs["root"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        server = cls(process, f"http://127.0.0.1:{port}", token)
        reader = threading.Thread(
            target=server._read_log, args=(f":{port}/lab",), daemon=True
        )
        reader.start()
        return server, reader

    def _read_log(self, url_part: str) -> None:
        """Collect output; set `ready` at the URL line or at the end of output.

        Runs on its own thread until every writer of the pipe (the server and
        the kernels, which inherit it) has exited.
        """
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            if url_part in line:
                self.ready.set()
        self.ready.set()

    def wait_until_serving(self) -> None:
        """Return once `/api/status` answers; fail if the server exits or is slow.

        The server logs its URL before its event loop binds the port, so the
        first requests after that line may still be refused.
        """
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        self.ready.wait(SERVER_START_TIMEOUT)
        while True:
            if self.process.poll() is not None:
                self.fail_with_log(f"JupyterLab exited with {self.process.returncode}")
            try:
                self.api("GET", "/api/status")
                return
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, ConnectionRefusedError):
                    raise
            if time.monotonic() > deadline:
                self.fail_with_log(
                    f"JupyterLab did not serve in {SERVER_START_TIMEOUT} s"
                )
            # Waiting on the process, not sleeping: its exit ends the wait at once.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=BIND_POLL_INTERVAL)

    def fail_with_log(self, reason: str) -> NoReturn:
        pytest.fail(f"{reason}; its last lines:\n" + "\n".join(self.log[-30:]))

    def api(self, method: str, path: str) -> Any:
        """Call the server's REST API with the token; return the decoded body."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> list[str]:
        """Ask the server to shut down every kernel; return what went wrong."""
        try:
            kernels = self.api("GET", "/api/kernels")
        except (urllib.error.URLError, OSError) as exc:
            return [f"listing kernels failed: {exc}"]
        problems = []
        for kernel in kernels:
            try:
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
            except (urllib.error.URLError, OSError) as exc:
                problems.append(f"shutting down kernel {kernel['id']} failed: {exc}")
        return problems

    def stop(self) -> list[str]:
        """SIGTERM the server's process group; SIGKILL it if the server lingers."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=SERVER_STOP_TIMEOUT)
        except ProcessLookupError:
            pass  # the group is already gone: nothing left to stop
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=SERVER_STOP_TIMEOUT)
            return [f"the server ignored SIGTERM for {SERVER_STOP_TIMEOUT} s"]
        return []


def _descendants(pid: int) -> set[psutil.Process]:
    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def _marked_processes(marker: str) -> set[psutil.Process]:
    """Live processes whose environment carries `_MARKER=marker`."""
    found = set()
    for process in psutil.process_iter(["environ"]):
        environ = process.info["environ"]  # None when access is denied
        if environ is not None and environ.get(_MARKER) == marker:
            found.add(process)
    return found


def _reap(processes: set[psutil.Process]) -> list[str]:
    """Wait up to EXIT_TIMEOUT for `processes` to exit; kill and describe the rest."""
    _, alive = psutil.wait_procs(processes, timeout=EXIT_TIMEOUT)
    left = []
    for process in alive:
        try:
            left.append(f"{process.pid} {' '.join(process.cmdline())[:100]}")
            process.kill()
        except psutil.NoSuchProcess:
            continue  # it exited after the wait; nothing to kill
    return left


def _evidence(title: str, lines: list[str]) -> None:
    """Print lines worth reading; pytest shows them beside a failure."""
    print(f"\n--- {title} ({len(lines)} lines)")
    for line in lines:
        print(line)


@pytest.fixture
def lab_server(tmp_path: Path) -> Iterator[_LabServer]:
    """JupyterLab on a free loopback port with private config, data and runtime dirs.

    Teardown shuts the kernels down through the API, stops the server's process
    group and fails the test if any process it started is still running.
    """
    server, reader = _LabServer.start(tmp_path)
    watched: set[psutil.Process] = set()
    try:
        server.wait_until_serving()
        yield server
    finally:
        # Snapshots before each step: a process re-parented later is still known.
        watched |= _descendants(server.process.pid)
        problems = server.shut_down_kernels() if server.process.poll() is None else []
        watched |= _descendants(server.process.pid)
        problems += server.stop()
        watched |= _marked_processes(str(tmp_path))
        if left := _reap(watched):
            problems.append(f"processes still ran after teardown: {left}")

        reader.join(EXIT_TIMEOUT)
        if reader.is_alive():
            problems.append("a process still holds the server's output pipe open")
        elif server.process.stdout is not None:
            server.process.stdout.close()
        # Warnings, errors and raw stderr from kernels; routine INFO lines are noise.
        _evidence("server log", [s for s in server.log if not s.startswith("[I ")])
        if problems:
            pytest.fail("; ".join(problems))


@pytest.fixture
def lab_page(tmp_path: Path) -> Iterator[Page]:
    """A page in headless Debian Chromium with a fresh profile and a private HOME.

    Teardown saves a screenshot, prints the console, closes the browser and
    fails the test if a browser process outlives it.
    """
    from playwright.sync_api import Error, sync_playwright

    assert _CHROMIUM is not None  # the skipif marks ran first
    home = tmp_path / "browser-home"
    home.mkdir()
    # Playwright's type for env admits numbers and flags too; these are strings.
    env: dict[str, str | float | bool] = {
        **os.environ,
        "HOME": str(home),
        _MARKER: str(tmp_path),
    }
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_CACHE_HOME", None)

    console: list[str] = []
    screenshot = tmp_path / "jupyterlab.png"
    before = set(psutil.Process().children())
    playwright = sync_playwright().start()
    watched: set[psutil.Process] = set()
    try:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=_CHROMIUM,
            headless=True,
            args=list(_CHROMIUM_FLAGS),
            env=env,
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
        try:
            yield page
        finally:
            # A crashed page has no picture to give; closing the browser matters more.
            with contextlib.suppress(Error):
                page.screenshot(path=screenshot)
            for child in set(psutil.Process().children()) - before:
                watched |= {child, *_descendants(child.pid)}
            context.close()
    finally:
        playwright.stop()
        left = _reap(watched)
        _evidence("browser console", console)
        print(f"screenshot: {screenshot}")
        if left:
            pytest.fail(f"browser processes still ran after teardown: {left}")


def _kernel_display_name(server: _LabServer) -> str:
    """The display name the server gives KERNEL_NAME; fail if it has no such spec."""
    specs = server.api("GET", "/api/kernelspecs")["kernelspecs"]
    assert KERNEL_NAME in specs, (
        f"the server finds no {KERNEL_NAME!r} kernelspec (it has {sorted(specs)}); "
        f"install it into {sys.prefix}/share/jupyter/kernels with `pip install .`"
    )
    display_name: str = specs[KERNEL_NAME]["spec"]["display_name"]
    if KERNEL_NAME == "pyrepl3":
        assert display_name == "PyREPL3"
    return display_name


def _run_cell(page: Page, cell: Locator, code: str) -> Locator:
    """Type `code` into `cell`, run it with Shift+Enter; return its output area."""
    cell.locator(".cm-content").click()
    # insert_text sends no key events, so auto-closing brackets cannot double them.
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")
    return cell.locator(".jp-OutputArea-output")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.skipif(
    _CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium)",
)
@pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None, reason="playwright is not installed"
)
@pytest.mark.skipif(
    importlib.util.find_spec("jupyterlab") is None,
    reason=f"jupyterlab is not installed for {sys.executable}",
)
def test_jupyterlab_notebook_renders_slider_and_kernel_reads_moved_value(
    lab_server: _LabServer, lab_page: Page
) -> None:
    """The launcher starts the kernel; a slider moved by keys reaches the kernel."""
    from playwright.sync_api import expect

    display_name = _kernel_display_name(lab_server)
    page = lab_page
    page.goto(f"{lab_server.url}/lab?token={lab_server.token}")

    tile = page.locator(
        f'.jp-LauncherCard[data-category="Notebook"][title="{display_name}"]'
    )
    tile.click(timeout=LAB_LOAD_TIMEOUT * 1000)
    status = page.locator("#jp-main-statusbar").get_by_text(
        f"{display_name} | Idle", exact=True
    )
    expect(status).to_be_visible(timeout=KERNEL_READY_TIMEOUT * 1000)
    notebook = page.locator(".jp-NotebookPanel")
    expect(notebook.locator(".jp-NotebookPanel-toolbar .jp-KernelName")).to_have_text(
        display_name
    )

    cells = notebook.locator(".jp-CodeCell")
    output = _run_cell(
        page,
        cells.nth(0),
        f"import ipywidgets as w; s = w.IntSlider(value={SLIDER_START}); s",
    )
    expect(cells.nth(0).locator(".jp-InputPrompt")).to_have_text(
        "[1]:", timeout=CELL_TIMEOUT * 1000
    )
    readout = output.locator(".widget-readout")
    expect(readout).to_have_text(str(SLIDER_START), timeout=CELL_TIMEOUT * 1000)

    # Each key press moves the handle and sends the new value over the comm.
    handle = output.locator(_SLIDER_HANDLE)
    handle.focus()
    for _ in range(SLIDER_PRESSES):
        handle.press("ArrowRight")
    moved = SLIDER_START + SLIDER_PRESSES
    expect(readout).to_have_text(str(moved), timeout=CELL_TIMEOUT * 1000)

    printed = _run_cell(page, cells.nth(1), "print(s.value)")
    expect(printed).to_have_text(str(moved), timeout=CELL_TIMEOUT * 1000)

    # And back: a value set in the kernel redraws the slider in the page.
    _run_cell(page, cells.nth(2), f"s.value = {SLIDER_FROM_KERNEL}")
    expect(readout).to_have_text(str(SLIDER_FROM_KERNEL), timeout=CELL_TIMEOUT * 1000)
    expect(cells.nth(2).locator(".jp-InputPrompt")).to_have_text(
        "[3]:", timeout=CELL_TIMEOUT * 1000
    )
