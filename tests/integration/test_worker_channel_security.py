"""The channel between the kernel and its workers, and what the workers can see.

Only the kernel that started a worker may talk to it: the kernel binds each
worker's endpoint as a Unix socket (mode 0600) in a private directory (mode
0700) and signs every message with a per-worker key handed over a private
pipe. The worker is not given the kernel's connection file, ports or key,
runs in the kernel's working directory with the user's environment, and
every temporary file goes away however the kernel or a worker ends.

The kernel's private directory is found through the sockets it has bound
(`LoggedKernel.socket_paths`), never by listing a shared temporary directory
other kernels may use at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import signal
import socket
import stat
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
import zmq.asyncio
from logged_kernel import LoggedKernel, is_gone, logged_kernel, wait_until

from pyrepl3_kernel.protocol.channel import WorkerChannel
from pyrepl3_kernel.protocol.messages import Kind, WorkerMessage

ENV_NAME = "PYREPL3_SECURITY_PROBE"  # a variable of "the user's environment"
NOBODY = 65534  # uid and gid of the unprivileged account on Debian-like systems
SPARE_TIMEOUT = 30.0  # s: until the warm spare's socket exists
EXIT_TIMEOUT = 10.0  # s: until a kernel's processes are gone after it was told to end
NOTICE_TIMEOUT = 10.0  # s: until the kernel noticed a killed worker or a forged message
STUCK_CELL = 4.0  # s: a trivial cell not answered by then is stuck
OTHER_USER_TIMEOUT = 30.0  # s: for the second user's attempts to finish


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedKernel]:
    """A kernel started in a directory of its own with one extra variable."""
    workdir = tmp_path_factory.mktemp("security")
    cwd = workdir / "notebooks"
    cwd.mkdir()
    env = {ENV_NAME: f"value-{uuid.uuid4().hex}"}
    with logged_kernel(workdir, cwd=cwd, env=env) as started:
        _wait_for_spare(started)
        yield started


def _wait_for_spare(kernel: LoggedKernel) -> None:
    """Both the active worker and the warm spare have their socket."""
    wait_until(
        lambda: len(kernel.socket_paths()) >= 2, SPARE_TIMEOUT, "the spare's socket"
    )


def _cell_output(kernel: LoggedKernel, code: str) -> str:
    cell = kernel.driver.execute(code, allow_stdin=False)
    assert cell.status == "ok", cell.reply
    return cell.stdout


def _active_worker(kernel: LoggedKernel) -> psutil.Process:
    return psutil.Process(int(_cell_output(kernel, "import os; print(os.getpid())")))


def _socket_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.is_socket()]


# -- the private directory ----------------------------------------------------


def test_private_directory_is_0700_and_socket_paths_vanish_once_connected(
    kernel: LoggedKernel,
) -> None:
    """Sockets live in a 0700 directory and their paths go once the worker is in."""
    directory = kernel.private_dir()
    info = directory.stat()

    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == kernel.process.uids().effective
    assert len(kernel.socket_paths()) >= 1
    wait_until(
        lambda: not _socket_files(directory),
        NOTICE_TIMEOUT,
        "every connected worker's socket path to be removed",
    )


def _try_as_other_user(directory: Path, sock: Path) -> dict[str, str]:
    """What an unprivileged user gets trying the directory and the socket.

    Root forks a child that becomes `nobody`; another user needs a sudo rule
    that lets it run python3 as nobody without a password, or the test skips.
    """
    code = (
        "import json, os, socket, sys\n"
        "out = {}\n"
        "try:\n    os.listdir(sys.argv[1]); out['list'] = 'allowed'\n"
        "except OSError as e:\n    out['list'] = type(e).__name__\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n    s.connect(sys.argv[2]); out['connect'] = 'allowed'\n"
        "except OSError as e:\n    out['connect'] = type(e).__name__\n"
        "print(json.dumps(out))\n"
    )
    if os.geteuid() == 0:
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # The child makes system calls only and leaves by _exit, so the
            # test process's threads (zmq's) cannot deadlock it.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: only system calls, then _exit
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                result = {}
                try:
                    os.listdir(directory)
                    result["list"] = "allowed"
                except OSError as exc:
                    result["list"] = type(exc).__name__
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(OTHER_USER_TIMEOUT)
                    try:
                        client.connect(str(sock))
                        result["connect"] = "allowed"
                    except OSError as exc:
                        result["connect"] = type(exc).__name__
                os.write(write_end, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            ready, _, _ = select.select([pipe], [], [], OTHER_USER_TIMEOUT)
            data = pipe.read() if ready else b"{}"
        os.waitpid(pid, 0)
        return dict(json.loads(data))
    sudo = [
        "sudo",
        "-n",
        "-u",
        "nobody",
        "python3",
        "-c",
        code,
        str(directory),
        str(sock),
    ]
    try:
        done = subprocess.run(
            sudo,
            capture_output=True,
            text=True,
            timeout=OTHER_USER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no sudo here to act as a second user")
    if done.returncode != 0:
        pytest.skip(
            f"cannot run python3 as nobody through sudo: {done.stderr.strip()[:200]}"
        )
    return dict(json.loads(done.stdout))


def test_second_user_can_neither_list_nor_connect(kernel: LoggedKernel) -> None:
    directory = kernel.private_dir()
    sock = Path(sorted(kernel.socket_paths())[0])
    if kernel.process.uids().effective == NOBODY:
        pytest.skip("the kernel itself runs as nobody")

    result = _try_as_other_user(directory, sock)

    assert result == {"list": "PermissionError", "connect": "PermissionError"}, result


# -- what a worker can see ----------------------------------------------------


def _worker_keys(kernel: LoggedKernel) -> list[bytes]:
    """Signing keys of every jupyter_client Session alive in the active worker."""
    code = (
        "import gc, json\n"
        "from jupyter_client.session import Session\n"
        "print(json.dumps(sorted({o.key.hex() for o in gc.get_objects()\n"
        "                         if isinstance(o, Session) and o.key})))"
    )
    return [bytes.fromhex(key) for key in json.loads(_cell_output(kernel, code))]


def _kernel_secrets(kernel: LoggedKernel) -> tuple[list[bytes], list[str]]:
    """(byte strings no worker may hold, port numbers as text)."""
    info = kernel.manager.get_connection_info()
    key = info["key"] if isinstance(info["key"], bytes) else str(info["key"]).encode()
    connection_file = str(kernel.manager.connection_file).encode()
    ports = [str(info[name]) for name in info if name.endswith("_port")]
    return [key, connection_file], ports


def _fd_targets(process: psutil.Process) -> list[str]:
    targets = []
    fd_dir = Path(f"/proc/{process.pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            targets.append(os.readlink(fd))
    return targets


def _worker_tree(kernel: LoggedKernel) -> list[psutil.Process]:
    """Every worker and each worker's descendants (group guards)."""
    tree = []
    for worker in kernel.workers():
        tree.append(worker)
        tree.extend(worker.children(recursive=True))
    return tree


def test_workers_hold_no_kernel_secrets_in_argv_environment_or_fds(
    kernel: LoggedKernel,
) -> None:
    secrets_, ports = _kernel_secrets(kernel)
    processes = _worker_tree(kernel)
    assert len(kernel.workers()) >= 2, "expected the active worker and a spare"

    for process in processes:
        argv = process.cmdline()
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        fds = _fd_targets(process)
        where = f"worker process {process.pid} {argv}"
        for secret in secrets_:
            assert not any(secret in arg.encode() for arg in argv), (
                f"{secret!r} in argv of {where}"
            )
            assert secret not in environ, f"{secret!r} in the environment of {where}"
            assert not any(secret in fd.encode() for fd in fds), (
                f"{secret!r} open in {where}"
            )
        values = [entry.partition(b"=")[2] for entry in environ.split(b"\0")]
        for port in ports:
            assert port.encode() not in values, (
                f"port {port} in the environment of {where}"
            )
            assert f":{port}".encode() not in environ, (
                f"port {port} in the environment of {where}"
            )
            parent_pid = (
                argv[argv.index("--parent-pid") + 1] if "--parent-pid" in argv else None
            )
            assert all(arg != port or arg == parent_pid for arg in argv), (
                f"port {port} in {where}"
            )
        for conn in process.net_connections(kind="inet"):
            used = {str(a.port) for a in (conn.laddr, conn.raddr) if a}
            assert not used & set(ports), (
                f"{where} is connected to a kernel port: {conn}"
            )


def test_worker_key_is_in_neither_argv_nor_environment(kernel: LoggedKernel) -> None:
    worker = _active_worker(kernel)
    keys = _worker_keys(kernel)
    kernel_key = _kernel_secrets(kernel)[0][0]

    assert keys, "the worker holds no signing key at all"
    assert kernel_key not in keys, "the worker holds the kernel's Jupyter key"
    environ = Path(f"/proc/{worker.pid}/environ").read_bytes()
    argv = " ".join(worker.cmdline()).encode()
    for key in keys:
        for spelling in (key, key.hex().encode()):
            assert spelling not in argv, "the worker's key is on its command line"
            assert spelling not in environ, "the worker's key is in its environment"


def test_worker_runs_in_kernel_cwd_with_user_environment(kernel: LoggedKernel) -> None:
    expected_cwd = kernel.process.cwd()
    expected_value = kernel.process.environ()[ENV_NAME]
    code = f"import os; print(os.getcwd()); print(os.environ.get({ENV_NAME!r}))"

    cwd, value = _cell_output(kernel, code).splitlines()

    assert Path(expected_cwd).name == "notebooks"
    assert cwd == expected_cwd
    assert value == expected_value
    for worker in kernel.workers():
        assert worker.cwd() == expected_cwd


# -- a peer that is not the worker --------------------------------------------


async def _forge_from(path: str, marker: str, received: list[list[bytes]]) -> None:
    """Send a worker-shaped execute signed with a random key, plus garbage."""
    context = zmq.asyncio.Context()
    peer = context.socket(zmq.DEALER)
    peer.linger = 0
    try:
        async with asyncio.timeout(NOTICE_TIMEOUT):
            await _forge_on(peer, marker, received, path)
    finally:
        peer.close(linger=0)
        context.term()


async def _forge_on(
    peer: zmq.asyncio.Socket, marker: str, received: list[list[bytes]], path: str
) -> None:
    peer.connect(f"ipc://{path}")
    channel = WorkerChannel(peer, secrets.token_bytes(32))
    content = {
        "code": f"print({marker!r})",
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
    }
    await channel.send(WorkerMessage(Kind.EXECUTE, content, req="forged"))
    await channel.send(WorkerMessage(Kind.READY, {"pid": os.getpid()}))
    await peer.send_multipart([b"\xff garbage", b"", b"{"])
    while await peer.poll(100):  # whatever came back while connected
        received.append(await peer.recv_multipart())


def _count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)


def test_peer_with_wrong_key_gets_nothing_executed(kernel: LoggedKernel) -> None:
    marker = f"FORGED-{uuid.uuid4().hex}"
    paths = sorted(kernel.socket_paths())
    mark = kernel.log_mark()
    received: list[list[bytes]] = []

    # The paths are removed once each worker connected, so a stranger's
    # connection goes nowhere; a peer that did get in would meet PAIR (one
    # peer only) and HMAC checks (unit-tested in test_channel.py).
    for path in paths:
        asyncio.run(_forge_from(path, marker, received))
    cell = kernel.driver.execute("print('still serving')", allow_stdin=False)
    log = kernel.log_since(mark)

    assert cell.status == "ok" and "still serving" in cell.stdout
    assert not received, f"the kernel sent {len(received)} message(s) to a stranger"
    assert marker not in "".join(
        m.content.get("text", "") for _, m in kernel.driver.all_iopub
    )
    assert "Traceback" not in log, log
    assert len(kernel.workers()) >= 1


def test_stray_peer_on_a_worker_socket_does_not_divert_kernel_messages(
    tmp_path: Path,
) -> None:
    with logged_kernel(tmp_path) as started:
        _wait_for_spare(started)
        context: zmq.Context[Any] = zmq.Context()
        stray = context.socket(zmq.DEALER)
        stray.linger = 0
        try:
            for path in sorted(started.socket_paths()):
                stray.connect(f"ipc://{path}")
            for n in range(3):
                cell = started.driver.execute(
                    f"print('cell {n}' * 1000)", allow_stdin=False, timeout=STUCK_CELL
                )
                assert cell.status == "ok", cell.reply
            assert not stray.poll(0), "the kernel sent worker messages to a stranger"
        finally:
            stray.close(linger=0)
            context.term()


# -- temporary files on every exit path ---------------------------------------


def test_killed_worker_leaves_no_socket_behind(kernel: LoggedKernel) -> None:
    """SIGKILL of the active worker: its socket closes and no path is left."""
    directory = kernel.private_dir()
    worker = _active_worker(kernel)
    bound_before = kernel.socket_paths()

    worker.send_signal(signal.SIGKILL)
    wait_until(lambda: is_gone(worker), NOTICE_TIMEOUT, "the worker's death")
    wait_until(
        lambda: not bound_before <= kernel.socket_paths(),
        NOTICE_TIMEOUT,
        "the kernel to close the dead worker's socket",
    )
    new_worker = _active_worker(kernel)

    assert new_worker.pid != worker.pid
    wait_until(
        lambda: not _socket_files(directory),
        SPARE_TIMEOUT,
        "no socket path left in the private directory",
    )


def test_shutdown_request_removes_private_dir_and_workers(tmp_path: Path) -> None:
    with logged_kernel(tmp_path) as started:
        _wait_for_spare(started)
        directory = started.private_dir()
        tree = started.tree()

        started.client.shutdown()  # a shutdown_request; the kernel exits by itself
        wait_until(
            lambda: all(is_gone(p) for p in tree), EXIT_TIMEOUT, "the kernel's exit"
        )

        assert not directory.exists(), sorted(directory.iterdir())
        assert "Traceback" not in started.log()


def test_sigterm_removes_private_dir_and_workers(tmp_path: Path) -> None:
    with logged_kernel(tmp_path) as started:
        _wait_for_spare(started)
        directory = started.private_dir()
        tree = started.tree()
        assert len(tree) >= 3, tree  # the kernel, two workers, their guards

        started.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: all(is_gone(p) for p in tree), EXIT_TIMEOUT, "the kernel's exit"
        )

        assert not directory.exists(), sorted(directory.iterdir())
        assert "Traceback" not in started.log()
