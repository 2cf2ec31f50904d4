"""Hostile input on every Jupyter socket must be refused, logged, and survived.

Each message here is built by hand (badly signed, truncated, not JSON, JSON of
the wrong shape, huge, deeply nested, not UTF-8, replayed, ...) and sent from
a DEALER socket of the test's own. For each one the kernel must refuse it, or
answer with an error reply where the messaging spec allows one; log a warning
that gives the reason, without a traceback; never run its code; and answer
the next valid request normally.

Ordering replaces sleeps: after a hostile message a valid request goes out on
the same socket, and the kernel handles one socket's messages in order, so
once its reply is in, the hostile message was dealt with (reply and log line
included). Code in a hostile message prints a marker, `MARK` plus a suffix
of its own, made at run time (so no generator can reproduce it from this
file's text); it must never show up on IOPub.

Known package bugs are `xfail(strict=True)` with the bug in the reason.
"""

from __future__ import annotations

import enum
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jupyter_client.jsonutil import json_default
from jupyter_client.session import DELIM, Session
from logged_kernel import LoggedKernel, is_gone, logged_kernel
from raw_shell import RawKind, RawShell

MARK = f"HOSTILE-{uuid.uuid4().hex}"  # printed by code that must never run
WRONG_KEY = uuid.uuid4().hex.encode()  # signs messages the kernel must drop
HUGE = 100 * 2**20  # bytes in a "huge" frame: 100 MB
DEEP = 100_000  # nesting depth of the "deeply nested" JSON values
REPLY_TIMEOUT = 30.0  # s: a probe's reply, even behind a 100 MB message
PROMPT_TIMEOUT = 10.0  # s: until a cell's input_request arrives
STUCK_CELL = 3.0  # s: a cell still waiting this long after its answer is stuck
WELCOME_TIMEOUT = 5.0  # s: until a new IOPub subscriber gets its iopub_welcome
SHUTDOWN_TIMEOUT = 5.0  # s: until a shutdown_request is answered
FUZZ_EXAMPLES = 900  # messages hypothesis draws; 15 to 25 s on a busy two-core machine
FUZZ_MAX_VARIANTS = 8  # cheap random variants sent after each unmarked message
FUZZ_MIN_MESSAGES = 2500  # the fuzz test sends at least this many messages in all
FUZZ_DRAIN_EVERY = 50  # messages between two drains of the test's own sockets

_BUG_IOPUB_EMPTY = (
    "package bug (inherited from ipykernel 7 iostream.py _handle_subscription): "
    "an empty frame from an XSUB peer raises IndexError, logged with a traceback, "
    "and the next new subscriber gets no iopub_welcome"
)


# -- building messages --------------------------------------------------------


def _json(value: Any) -> bytes:
    """JSON as a hostile client would send it (lone surrogates stay escaped)."""
    return json.dumps(value, default=json_default).encode()


def _msg_id(header_bytes: bytes) -> str:
    """The msg_id a kernel could answer to, or "" if the header has none."""
    try:
        header = json.loads(header_bytes.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return ""
    msg_id = header.get("msg_id") if isinstance(header, dict) else None
    return msg_id if isinstance(msg_id, str) else ""


def _deep_list(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


def _execute(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": False,
    }


_NEW = object()  # `Forge.message` makes a fresh header


class Sign(enum.Enum):
    """How `Forge.message` signs."""

    GOOD = "good"  # with the kernel's key
    WRONG = "wrong"  # with another key
    NONE = "none"  # empty signature frame


@final
class Forge:
    """Builds multipart Jupyter messages, valid or not, for one kernel's key."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        scheme = info.get("signature_scheme", "hmac-sha256")
        self.session = Session(key=info["key"], signature_scheme=scheme)
        self._impostor = Session(key=WRONG_KEY, signature_scheme=scheme)
        self.last_id = ""  # msg_id of the last message built, "" if it has none

    def header(self, msg_type: str, **fields: Any) -> dict[str, Any]:
        header = dict(self.session.msg_header(msg_type), **fields)
        self.last_id = str(header.get("msg_id", ""))
        return header

    def message(
        self,
        msg_type: str = "execute_request",
        content: Any = _NEW,
        *,
        header: Any = _NEW,
        header_bytes: bytes | None = None,
        parent: bytes = b"{}",
        metadata: bytes = b"{}",
        content_bytes: bytes | None = None,
        sign: Sign = Sign.GOOD,
    ) -> list[bytes]:
        """[DELIM, signature, header, parent, metadata, content] as asked."""
        if header_bytes is None:
            if header is _NEW:
                header = self.header(msg_type)
            header_bytes = _json(header)
        self.last_id = _msg_id(header_bytes)
        if content_bytes is None:
            content_bytes = _json({} if content is _NEW else content)
        parts = [header_bytes, parent, metadata, content_bytes]
        return [DELIM, self.sign(parts, sign), *parts]

    def sign(self, parts: list[bytes], sign: Sign = Sign.GOOD) -> bytes:
        if sign is Sign.NONE:
            return b""
        signer = self.session if sign is Sign.GOOD else self._impostor
        return bytes(signer.sign(parts))


@dataclass(frozen=True)
class Reply:
    msg_type: str
    parent_id: str | None
    content: Mapping[str, Any]

    @property
    def status(self) -> Any:
        return self.content.get("status")


@final
class Peer:
    """A DEALER of the test's own on one kernel port, used by the test thread."""

    def __init__(
        self,
        context: zmq.Context[Any],
        info: Mapping[str, Any],
        port: str,
        forge: Forge,
        identity: bytes | None = None,
    ) -> None:
        self.forge = forge
        self.socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self.socket.linger = 0
        if identity is not None:
            self.socket.identity = identity
        self.socket.connect(
            f"{info.get('transport', 'tcp')}://{info['ip']}:{info[port]}"
        )

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def read(self, timeout: float) -> Reply | None:
        """The next message the kernel sends here, or None after `timeout` s."""
        if not self.socket.poll(int(timeout * 1000)):
            return None
        frames = self.socket.recv_multipart()
        try:
            _, body = self.forge.session.feed_identities(frames)
            message = self.forge.session.deserialize(body)
        except (ValueError, KeyError, TypeError):
            return Reply("<undecodable>", None, {"frames": frames})
        parent_id = (message.get("parent_header") or {}).get("msg_id")
        return Reply(message["header"]["msg_type"], parent_id, message["content"])

    def read_until(self, msg_id: str, timeout: float = REPLY_TIMEOUT) -> list[Reply]:
        """Every message up to and including the reply to `msg_id`."""
        deadline = time.monotonic() + timeout
        replies: list[Reply] = []
        while (remaining := deadline - time.monotonic()) > 0:
            reply = self.read(remaining)
            if reply is None:
                break
            replies.append(reply)
            if reply.parent_id == msg_id:
                return replies
        raise AssertionError(
            f"no reply to {msg_id} within {timeout:g}s; read {replies}"
        )

    def sync(self) -> list[Reply]:
        """Send a valid kernel_info_request; return what came before its reply."""
        self.send(self.forge.message("kernel_info_request"))
        probe_id = self.forge.last_id
        replies = self.read_until(probe_id)
        assert replies[-1].msg_type == "kernel_info_reply", replies[-1]
        return replies[:-1]

    def close(self) -> None:
        self.socket.close(linger=0)


@dataclass
class Hostile:
    """The module's kernel and the test's own sockets on it."""

    kernel: LoggedKernel
    forge: Forge
    peers: dict[str, Peer]
    context: zmq.Context[Any]
    info: Mapping[str, Any]  # the kernel's connection info


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """One kernel for the whole module; each test checks it still serves."""
    with logged_kernel(tmp_path_factory.mktemp("hostile")) as kernel:
        info = kernel.manager.get_connection_info()
        forge = Forge(info)
        context: zmq.Context[Any] = zmq.Context()
        identity = uuid.uuid4().hex.encode()  # shell and stdin share it, as clients do
        peers = {
            "shell": Peer(context, info, "shell_port", forge, identity),
            "control": Peer(context, info, "control_port", forge),
            "stdin": Peer(context, info, "stdin_port", forge, identity),
        }
        try:
            yield Hostile(kernel, forge, peers, context, info)
        finally:
            for peer in peers.values():
                peer.close()
            context.term()


# -- checks shared by the tests -----------------------------------------------


def _iopub_text(kernel: LoggedKernel) -> str:
    return "\n".join(
        json.dumps(m.content, default=str) for _, m in kernel.driver.all_iopub
    )


def _marker(name: str) -> str:
    """A token only the code of one test's hostile messages prints."""
    return f"{MARK}-{name}-{uuid.uuid4().hex[:8]}"


def _assert_still_serves(kernel: LoggedKernel, marker: str | None = None) -> None:
    """A normal cell runs and prints, and the code printing `marker` did not run.

    The cell runs after the hostile message was handled, so anything that
    message printed reached IOPub before this cell's output.
    """
    probe = f"still serving {uuid.uuid4().hex}"
    cell = kernel.driver.execute(
        f"print({probe!r})", allow_stdin=False, timeout=REPLY_TIMEOUT
    )
    assert cell.status == "ok", cell.reply
    assert probe in cell.stdout
    if marker is not None:
        assert marker not in _iopub_text(kernel), (
            "code of a hostile message reached a worker"
        )


def _assert_logged(log: str, reason: str) -> None:
    """A WARNING line matches `reason` (a regex, case-insensitive)."""
    pattern = re.compile(rf"WARNING.*(?:{reason})", re.IGNORECASE)
    lines = [line for line in log.splitlines() if pattern.search(line)]
    assert lines, f"no warning matching {reason!r} in the kernel log:\n{log[-3000:]}"


def _assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log, f"the kernel logged a traceback:\n{log[-6000:]}"


# -- the shell and control cases ----------------------------------------------


class Outcome(enum.Enum):
    """What a case expects of the kernel, besides no traceback and still serving."""

    REFUSE = "refuse"  # no reply or an error reply; a warning gives the reason
    ERROR_REPLY = "error_reply"  # an error reply
    ANSWER = "answer"  # some reply, "ok" or "error" (the client must not hang)
    SURVIVE = "survive"  # any of the above


Build = Callable[[Forge, str], list[bytes]]  # (forge, code to run) -> frames


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    outcome: Outcome
    reason: str = ""  # regex of the logged reason, for REFUSE
    channels: tuple[str, ...] = ("shell", "control")
    bugs: Mapping[str, str] = field(default_factory=dict)  # channel -> xfail reason


def _header_without(*names: str) -> Build:
    def build(forge: Forge, code: str) -> list[bytes]:
        header = forge.header("execute_request")
        for name in names:
            header.pop(name)
        return forge.message(content=_execute(code), header=header)

    return build


def _header_is(value: Any) -> Build:
    return lambda forge, code: forge.message(header=value, content=_execute(code))


def _content_is(value: Any) -> Build:
    return lambda forge, code: forge.message(content=value)


def _header_with(msg_type: Any = "execute_request", **fields: Any) -> Build:
    def build(forge: Forge, code: str) -> list[bytes]:
        content = _execute(code) if msg_type == "execute_request" else {}
        return forge.message(msg_type, content, header=forge.header(msg_type, **fields))

    return build


def _truncated(keep: int) -> Build:
    def build(forge: Forge, code: str) -> list[bytes]:
        frames = forge.message(content=_execute(code))[:keep]
        if keep >= 3:
            # Re-sign what is left, so only the length is wrong.
            frames[1] = forge.sign(frames[2:])
        return frames

    return build


_WRONG_JSON = {"list": [1, 2], "number": 42, "null": None, "string": "x"}
_SHELL_ONLY = ("shell",)

CASES: list[Case] = [
    Case(
        "wrong_key",
        lambda f, c: f.message(content=_execute(c), sign=Sign.WRONG),
        Outcome.REFUSE,
        "signature",
    ),
    Case(
        "unsigned",
        lambda f, c: f.message(content=_execute(c), sign=Sign.NONE),
        Outcome.REFUSE,
        "unsigned|signature",
    ),
    Case(
        "signature_not_utf8",
        lambda f, c: [DELIM, b"\xff\xfe\x00" * 21, *f.message(content=_execute(c))[2:]],
        Outcome.REFUSE,
        "signature",
    ),
    Case(
        "no_delimiter",
        lambda f, c: [b"\x01\xfe not jupyter", _json(_execute(c))],
        Outcome.REFUSE,
        "delim",
    ),
    Case("empty_frame", lambda f, c: [b""], Outcome.REFUSE, "delim"),
    Case("delimiter_only", _truncated(1), Outcome.REFUSE, "truncated|frames|malformed"),
    Case(
        "three_signed_frames",
        _truncated(4),
        Outcome.REFUSE,
        "truncated|frames|malformed",
    ),
    Case(
        "no_content_frame", _truncated(5), Outcome.REFUSE, "truncated|frames|malformed"
    ),
    Case(
        "header_not_json",
        lambda f, c: f.message(
            header_bytes=b'{"msg_type": "execute_request", ', content=_execute(c)
        ),
        Outcome.REFUSE,
        "json|decod",
    ),
    Case(
        "content_not_json",
        lambda f, c: f.message(content_bytes=b'{"code": ' + _json(c) + b", oops"),
        Outcome.REFUSE,
        "json|decod",
    ),
    *[
        Case(
            f"header_is_{name}",
            _header_is(value),
            Outcome.REFUSE,
            "header",
        )
        for name, value in _WRONG_JSON.items()
    ],
    *[
        Case(
            f"content_is_{name}",
            _content_is(value),
            Outcome.REFUSE,
            "content",
        )
        for name, value in _WRONG_JSON.items()
    ],
    Case("header_without_msg_id", _header_without("msg_id"), Outcome.REFUSE, "msg_id"),
    Case(
        "header_without_msg_type",
        _header_without("msg_type"),
        Outcome.REFUSE,
        "msg_type",
    ),
    Case("msg_type_not_a_string", _header_with(msg_type=7), Outcome.REFUSE, "msg_type"),
    Case(
        "unknown_msg_type",
        lambda f, c: f.message("no_such_request", _execute(c)),
        Outcome.REFUSE,
        "unknown",
    ),
    Case(
        "content_without_code",
        lambda f, c: f.message(
            content={k: v for k, v in _execute(c).items() if k != "code"}
        ),
        Outcome.REFUSE,
        "code",
    ),
    Case(
        "fields_of_wrong_types",
        lambda f, c: f.message(
            content=dict(_execute(c), silent="no", user_expressions=[c])
        ),
        Outcome.REFUSE,
        "type",
    ),
    Case("huge_garbage_frame", lambda f, c: [b"\x00" * HUGE], Outcome.REFUSE, "delim"),
    Case(
        "huge_wrongly_signed",
        lambda f, c: f.message(content=_execute(c + "#" + "x" * HUGE), sign=Sign.WRONG),
        Outcome.REFUSE,
        "signature",
    ),
    Case(
        "huge_content_not_an_object",
        lambda f, c: f.message(content_bytes=b'"' + b"x" * HUGE + b'"'),
        Outcome.REFUSE,
        "content",
    ),
    Case(
        "deeply_nested_content",
        lambda f, c: f.message(content_bytes=_deep_list()),
        Outcome.REFUSE,
        "json|recursion|depth|nest",
    ),
    Case(
        "deeply_nested_header",
        lambda f, c: f.message(header_bytes=_deep_list(), content=_execute(c)),
        Outcome.REFUSE,
        "json|recursion|depth|nest",
    ),
    Case(
        "deeply_nested_parent",
        lambda f, c: f.message(parent=_deep_list(), content=_execute(c)),
        Outcome.REFUSE,
        "json|recursion|depth|nest",
    ),
    Case(
        "deeply_nested_metadata",
        lambda f, c: f.message(metadata=_deep_list(), content=_execute(c)),
        Outcome.REFUSE,
        "json|recursion|depth|nest",
    ),
    Case(
        "parent_not_json",
        lambda f, c: f.message(parent=b"{nope", content=_execute(c)),
        Outcome.REFUSE,
        "json|decod",
    ),
    Case(
        "metadata_not_json",
        lambda f, c: f.message(metadata=b"\x00\x01", content=_execute(c)),
        Outcome.REFUSE,
        "json|decod",
    ),
    Case(
        "metadata_is_list",
        lambda f, c: f.message(metadata=b"[1]", content=_execute(c)),
        Outcome.REFUSE,
        "metadata",
        channels=_SHELL_ONLY,
    ),
    Case(
        "content_not_utf8",
        lambda f, c: f.message(
            content_bytes=_json(_execute(c))[:-1] + b', "x": "\xff"}'
        ),
        Outcome.REFUSE,
        "utf|decod|json",
    ),
    Case(
        "header_with_infinity",
        lambda f, c: f.message(
            header_bytes=_json(f.header("kernel_info_request"))[:-1]
            + b', "x": Infinity}'
        ),
        Outcome.REFUSE,
        "json|infinity|nan|finite",
    ),
    Case(
        "header_not_utf8",
        lambda f, c: f.message(
            header_bytes=_json(f.header("execute_request"))[:-1]
            + b', "x": "\xc3\x28"}',
            content=_execute(c),
        ),
        Outcome.REFUSE,
        "utf|decod|json",
    ),
    # Well signed and almost well formed: answering is as fine as refusing,
    # but neither may cost a traceback or leave the client without a reply.
    Case(
        "header_without_version",
        _header_without("version"),
        Outcome.SURVIVE,
    ),
    Case(
        "header_without_session_username_date",
        _header_without("session", "username", "date"),
        Outcome.SURVIVE,
    ),
    Case(
        "version_not_a_string",
        _header_with("kernel_info_request", version=5),
        Outcome.SURVIVE,
    ),
    Case(
        "impossible_date",
        _header_with("kernel_info_request", date="2020-13-45T99:99:99"),
        Outcome.SURVIVE,
    ),
    Case(
        "subshell_id_a_list",
        _header_with("kernel_info_request", subshell_id=[1]),
        Outcome.SURVIVE,
    ),
    Case(
        "unknown_subshell",
        _header_with("kernel_info_request", subshell_id="nope"),
        Outcome.ERROR_REPLY,
        channels=_SHELL_ONLY,
    ),
    Case(
        "msg_id_lone_surrogate",
        _header_with("kernel_info_request", msg_id="\ud800"),
        Outcome.SURVIVE,
    ),
    Case(
        "code_lone_surrogate",
        lambda f, c: f.message(content=_execute("pass  # \ud800")),
        Outcome.ANSWER,
    ),
    Case(
        "inspect_omit_sections_a_number",
        lambda f, c: f.message(
            "inspect_request", {"code": "len", "cursor_pos": 3, "omit_sections": 5}
        ),
        Outcome.ANSWER,
    ),
    Case(
        "history_unknown_field",
        lambda f, c: f.message(
            "history_request",
            {
                "hist_access_type": "tail",
                "n": 1,
                "output": False,
                "raw": True,
                "evil": 1,
            },
        ),
        Outcome.ANSWER,
    ),
    Case(
        "history_without_output_and_raw",
        lambda f, c: f.message("history_request", {"hist_access_type": "tail", "n": 1}),
        Outcome.ANSWER,
    ),
    Case(
        "complete_cursor_out_of_range",
        lambda f, c: f.message(
            "complete_request", {"code": "pri", "cursor_pos": 10**30}
        ),
        Outcome.ANSWER,
    ),
    Case(
        "inspect_negative_cursor",
        lambda f, c: f.message("inspect_request", {"code": "len", "cursor_pos": -7}),
        Outcome.ANSWER,
    ),
    Case(
        "execute_on_control",
        lambda f, c: f.message(content=_execute(c)),
        Outcome.ERROR_REPLY,
        channels=("control",),
    ),
]


def _case_params() -> list[Any]:
    params = []
    for case in CASES:
        for channel in case.channels:
            marks = []
            if channel in case.bugs:
                marks.append(pytest.mark.xfail(strict=True, reason=case.bugs[channel]))
            params.append(
                pytest.param(case, channel, id=f"{channel}-{case.name}", marks=marks)
            )
    return params


@pytest.mark.parametrize(("case", "channel"), _case_params())
def test_hostile_message_is_refused_logged_and_survived(
    hostile: Hostile, case: Case, channel: str
) -> None:
    kernel, peer = hostile.kernel, hostile.peers[channel]
    mark = kernel.log_mark()
    # Only messages that must not run carry the marker; the others may run "pass".
    must_not_run = case.outcome in (Outcome.REFUSE, Outcome.ERROR_REPLY)
    marker = _marker(case.name)
    code = f"print({marker!r})" if must_not_run else "pass"

    frames = case.build(hostile.forge, code)
    msg_id = hostile.forge.last_id
    peer.send(frames)
    before_probe = peer.sync()
    _assert_still_serves(kernel, marker)
    # Read after a whole cell: a handler's failure may be logged a little
    # after the reply that follows it.
    log = kernel.log_since(mark)

    answers = [r for r in before_probe if r.parent_id == msg_id and msg_id]
    if case.outcome is Outcome.REFUSE:
        assert all(r.status == "error" for r in answers), answers
        _assert_logged(log, case.reason)
    elif case.outcome is Outcome.ERROR_REPLY:
        assert [r.status for r in answers] == ["error"], answers
    elif case.outcome is Outcome.ANSWER:
        assert len(answers) == 1, f"expected one reply, got {answers}"
    _assert_no_traceback(log)


@pytest.mark.parametrize("kind", list(RawKind), ids=lambda kind: kind.value)
def test_raw_shell_kinds_are_logged_without_traceback(
    hostile: Hostile, kind: RawKind
) -> None:
    """The shared RawShell's bad messages: a warning each, no traceback, no code run."""
    kernel = hostile.kernel
    reasons = {
        RawKind.BAD_SIGNATURE: "signature",
        RawKind.UNSIGNED: "unsigned|signature",
        RawKind.GARBAGE: "delim",
        RawKind.BAD_JSON_CONTENT: "json|decod",
        RawKind.MISSING_CODE: "code",
        RawKind.WRONG_TYPES: "type",
        RawKind.UNKNOWN_TYPE: "unknown",
    }
    raw = RawShell(hostile.info)
    marker = _marker(kind.value)
    try:
        mark = kernel.log_mark()
        raw.send(kind, code=f"print({marker!r})")
        probe_id = raw.send_valid("pass")
        assert raw.wait_reply(probe_id, REPLY_TIMEOUT) is not None, "probe not answered"
        log = kernel.log_since(mark)
    finally:
        raw.close()
    _assert_logged(log, reasons[kind])
    _assert_no_traceback(log)
    _assert_still_serves(kernel, marker)


# -- replays ------------------------------------------------------------------


def test_replayed_execute_request_runs_once(hostile: Hostile) -> None:
    kernel, shell = hostile.kernel, hostile.peers["shell"]
    token = f"replay-{uuid.uuid4().hex}"
    frames = hostile.forge.message(content=_execute(f"print({token!r})"))
    msg_id = hostile.forge.last_id
    shell.send(frames)
    first = shell.sync()
    mark = kernel.log_mark()

    shell.send(frames)
    second = shell.sync()
    log = kernel.log_since(mark)

    assert [r.status for r in first if r.parent_id == msg_id] == ["ok"]
    assert not [r for r in second if r.parent_id == msg_id], second
    _assert_logged(log, "replay|duplicate")
    _assert_no_traceback(log)
    _assert_still_serves(kernel)
    printed = [
        m.content.get("text", "")
        for _, m in kernel.driver.all_iopub
        if m.msg_type == "stream"
    ]
    assert "".join(printed).count(token) == 1


@pytest.mark.parametrize(
    ("first", "then"),
    [("control", "control"), ("shell", "control"), ("control", "shell")],
)
def test_replayed_request_is_refused(hostile: Hostile, first: str, then: str) -> None:
    """A kernel_info_request answered once gets no second answer, on any channel."""
    kernel = hostile.kernel
    frames = hostile.forge.message("kernel_info_request")
    msg_id = hostile.forge.last_id
    hostile.peers[first].send(frames)
    assert hostile.peers[first].read_until(msg_id)[-1].status == "ok"
    mark = kernel.log_mark()

    hostile.peers[then].send(frames)
    replies = hostile.peers[then].sync()
    log = kernel.log_since(mark)

    assert not [r for r in replies if r.parent_id == msg_id], replies
    _assert_logged(log, "replay|duplicate")
    _assert_no_traceback(log)
    _assert_still_serves(kernel)


# -- stdin --------------------------------------------------------------------


@dataclass
class Prompt:
    """A cell of the test's own, waiting in input()."""

    msg_id: str  # the execute_request
    header: dict[str, Any]  # the input_request's header


def _open_prompt(hostile: Hostile, code: str) -> Prompt:
    """Run `code` from the test's shell socket and wait for its input_request."""
    content = dict(_execute(code), allow_stdin=True)
    hostile.peers["shell"].send(hostile.forge.message(content=content))
    msg_id = hostile.forge.last_id
    stdin = hostile.peers["stdin"]
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while (remaining := deadline - time.monotonic()) > 0:
        frames = (
            stdin.socket.poll(int(remaining * 1000)) and stdin.socket.recv_multipart()
        )
        if not frames:
            break
        _, body = hostile.forge.session.feed_identities(frames)
        message = hostile.forge.session.deserialize(body)
        if message["parent_header"].get("msg_id") == msg_id:
            return Prompt(msg_id, message["header"])
    raise AssertionError(f"no input_request within {PROMPT_TIMEOUT:g}s")


def _answer(hostile: Hostile, prompt: Prompt | None, value: str) -> list[bytes]:
    """Send a valid input_reply (to the oldest prompt if `prompt` is None)."""
    parent = _json(prompt.header) if prompt is not None else b"{}"
    frames = hostile.forge.message("input_reply", {"value": value}, parent=parent)
    hostile.peers["stdin"].send(frames)
    return frames


def _finish_cell(
    hostile: Hostile, prompt: Prompt, marker: str | None = None
) -> tuple[Reply, str]:
    """The cell's execute_reply and stdout; a stuck cell is interrupted, then fails."""
    shell = hostile.peers["shell"]
    try:
        replies = shell.read_until(prompt.msg_id, STUCK_CELL)
    except AssertionError:
        hostile.kernel.driver.interrupt()
        shell.read_until(prompt.msg_id, REPLY_TIMEOUT)
        raise AssertionError(
            "the cell still waited for input after its valid answer"
        ) from None
    _assert_still_serves(hostile.kernel, marker)  # also reads the cell's IOPub output
    stdout = "".join(
        m.content.get("text", "")
        for parent, m in hostile.kernel.driver.all_iopub
        if parent == prompt.msg_id and m.msg_type == "stream"
    )
    return replies[-1], stdout


@dataclass(frozen=True)
class StdinCase:
    name: str
    build: Callable[[Forge, Prompt, str], list[bytes]]  # (forge, prompt, value)
    reason: str
    bug: str = ""


def _reply_to(prompt: Prompt, forge: Forge, **kwargs: Any) -> list[bytes]:
    return forge.message("input_reply", parent=_json(prompt.header), **kwargs)


def _without_content(frames: list[bytes], forge: Forge) -> list[bytes]:
    """Drop the content frame and sign the rest, so only the length is wrong."""
    return [frames[0], forge.sign(frames[2:5]), *frames[2:5]]


STDIN_CASES = [
    StdinCase(
        "wrong_key",
        lambda f, p, v: _reply_to(p, f, content={"value": v}, sign=Sign.WRONG),
        "signature",
    ),
    StdinCase(
        "unsigned",
        lambda f, p, v: _reply_to(p, f, content={"value": v}, sign=Sign.NONE),
        "unsigned|signature",
    ),
    StdinCase(
        "no_delimiter", lambda f, p, v: [b"garbage", _json({"value": v})], "delim"
    ),
    StdinCase(
        "three_signed_frames",
        lambda f, p, v: _without_content(_reply_to(p, f, content={"value": v}), f),
        "truncated|frames|malformed",
    ),
    StdinCase(
        "content_not_json",
        lambda f, p, v: _reply_to(p, f, content_bytes=b'{"value": ' + _json(v)),
        "json|decod",
    ),
    StdinCase(
        "header_is_list",
        lambda f, p, v: _reply_to(p, f, header=[1], content={"value": v}),
        "header|type",
    ),
    StdinCase(
        "header_without_msg_id",
        lambda f, p, v: _reply_to(
            p, f, header={"msg_type": "input_reply"}, content={"value": v}
        ),
        "msg_id",
    ),
    StdinCase(
        "huge_wrongly_signed",
        lambda f, p, v: _reply_to(
            p, f, content={"value": v + "x" * HUGE}, sign=Sign.WRONG
        ),
        "signature",
    ),
    StdinCase(
        "deeply_nested_content",
        lambda f, p, v: _reply_to(p, f, content_bytes=_deep_list()),
        "json|recursion|depth|nest",
    ),
    StdinCase(
        "content_is_list",
        lambda f, p, v: _reply_to(p, f, content=[v]),
        "content",
    ),
    StdinCase(
        "value_not_utf8",
        lambda f, p, v: _reply_to(
            p, f, content_bytes=b'{"value": "' + v.encode() + b'\xff"}'
        ),
        "utf|decod|json",
    ),
    StdinCase(
        "not_an_input_reply",
        lambda f, p, v: f.message(
            content=_execute(f"print({v!r})"), parent=_json(p.header)
        ),
        "input_reply|msg_type|type",
    ),
]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.name,
            marks=[pytest.mark.xfail(strict=True, reason=c.bug)] if c.bug else [],
        )
        for c in STDIN_CASES
    ],
)
def test_hostile_stdin_message_does_not_answer_the_prompt(
    hostile: Hostile, case: StdinCase
) -> None:
    kernel = hostile.kernel
    prompt = _open_prompt(hostile, "print('got', repr(input('? ')))")
    mark = kernel.log_mark()
    good = f"good-{uuid.uuid4().hex}"
    marker = _marker(case.name)

    hostile.peers["stdin"].send(case.build(hostile.forge, prompt, marker))
    _answer(hostile, prompt, good)
    reply, stdout = _finish_cell(hostile, prompt, marker)
    log = kernel.log_since(mark)

    assert reply.status == "ok", reply
    assert f"got {good!r}" in stdout
    _assert_logged(log, case.reason)
    _assert_no_traceback(log)


def test_replayed_input_reply_is_refused(hostile: Hostile) -> None:
    kernel = hostile.kernel
    prompt = _open_prompt(hostile, "print('got', input('1? '), input('2? '))")
    # An answer without parent goes to the oldest open prompt, so a replay
    # of it would be taken by the second prompt if it were accepted.
    first = _answer(hostile, None, "one")
    second = _wait_next_prompt(hostile, prompt.msg_id)
    mark = kernel.log_mark()

    hostile.peers["stdin"].send(first)
    _answer(hostile, second, "two")
    reply, stdout = _finish_cell(hostile, prompt)
    log = kernel.log_since(mark)

    assert reply.status == "ok", reply
    assert "got one two" in stdout
    _assert_logged(log, "replay|duplicate")
    _assert_no_traceback(log)


def _wait_next_prompt(hostile: Hostile, msg_id: str) -> Prompt:
    stdin = hostile.peers["stdin"]
    assert stdin.socket.poll(int(PROMPT_TIMEOUT * 1000)), "no second input_request"
    _, body = hostile.forge.session.feed_identities(stdin.socket.recv_multipart())
    message = hostile.forge.session.deserialize(body)
    assert message["parent_header"].get("msg_id") == msg_id
    return Prompt(msg_id, message["header"])


# -- IOPub and heartbeat ------------------------------------------------------


def _iopub_peer(hostile: Hostile) -> zmq.Socket[bytes]:
    info = hostile.info
    peer: zmq.Socket[bytes] = hostile.context.socket(zmq.XSUB)
    peer.linger = 0
    peer.connect(f"{info.get('transport', 'tcp')}://{info['ip']}:{info['iopub_port']}")
    return peer


def _assert_welcomed(hostile: Hostile) -> None:
    """A new subscriber still gets its iopub_welcome: the IOPub thread lives."""
    peer = _iopub_peer(hostile)
    # A topic nobody has subscribed to yet: XPUB hides repeated subscriptions.
    topic = f"probe-{uuid.uuid4().hex}".encode()
    try:
        peer.send(b"\x01" + topic)
        deadline = time.monotonic() + WELCOME_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            if not peer.poll(int(remaining * 1000)):
                break
            frames = peer.recv_multipart()
            if frames[0] == topic and b"iopub_welcome" in b"".join(frames[1:4]):
                return
        raise AssertionError("no iopub_welcome for a new subscriber")
    finally:
        peer.close(linger=0)


def _send_to_iopub(hostile: Hostile, frames: list[bytes]) -> str:
    kernel = hostile.kernel
    mark = kernel.log_mark()
    peer = _iopub_peer(hostile)
    try:
        for frame in frames:
            peer.send(frame)
        # IOPub output of a cell passes the same IOPub thread after them.
        _assert_still_serves(kernel)
        _assert_welcomed(hostile)
    finally:
        peer.close(linger=0)
    return kernel.log_since(mark)


def test_iopub_ignores_garbage_from_a_subscriber(hostile: Hostile) -> None:
    frames = [
        b"\x01",  # subscribe to everything
        b"\x02 not a subscription",
        b"\x01\xff\xfe not utf-8",
        b"\x01" + b"t" * 2**14,  # a 16 KB topic (libzmq's XSUB trie recurses per byte)
        b"\x07" + b"\x00" * HUGE,  # a 100 MB frame that is no subscription
        b"\x00",  # unsubscribe
    ]
    _assert_no_traceback(_send_to_iopub(hostile, frames))


@pytest.mark.xfail(strict=True, reason=_BUG_IOPUB_EMPTY)
def test_iopub_survives_an_empty_subscription_frame(hostile: Hostile) -> None:
    _assert_no_traceback(_send_to_iopub(hostile, [b""]))


def test_heartbeat_echoes_garbage_and_keeps_beating(hostile: Hostile) -> None:
    info, kernel = hostile.info, hostile.kernel
    address = f"{info.get('transport', 'tcp')}://{info['ip']}:{info['hb_port']}"
    mark = kernel.log_mark()
    sockets = []
    try:
        for frames in ([b"\xff\x00 garbage"], [b"", b"x", b"\x80" * HUGE], [b""]):
            sock: zmq.Socket[bytes] = hostile.context.socket(zmq.DEALER)
            sock.linger = 0
            sockets.append(sock)
            sock.connect(address)
            sock.send_multipart(frames)
            assert sock.poll(int(REPLY_TIMEOUT * 1000)), (
                f"no echo for {len(frames)} frames"
            )
            assert sock.recv_multipart() == frames
        ping: zmq.Socket[bytes] = hostile.context.socket(zmq.REQ)
        ping.linger = 0
        sockets.append(ping)
        ping.connect(address)
        ping.send(b"ping")
        assert ping.poll(int(REPLY_TIMEOUT * 1000)) and ping.recv() == b"ping"
    finally:
        for sock in sockets:
            sock.close(linger=0)
    _assert_no_traceback(kernel.log_since(mark))
    _assert_still_serves(kernel)


# -- bugs that break a kernel for good get a kernel of their own --------------


def test_input_reply_with_unhashable_parent_id_leaves_stdin_working(
    tmp_path: Path,
) -> None:
    with logged_kernel(tmp_path) as kernel:
        info = kernel.manager.get_connection_info()
        context: zmq.Context[Any] = zmq.Context()
        forge = Forge(info)
        identity = uuid.uuid4().hex.encode()
        peers = {
            "shell": Peer(context, info, "shell_port", forge, identity),
            "stdin": Peer(context, info, "stdin_port", forge, identity),
        }
        hostile = Hostile(kernel, forge, peers, context, info)
        try:
            prompt = _open_prompt(hostile, "print('got', input('? '))")
            mark = kernel.log_mark()
            peers["stdin"].send(
                forge.message(
                    "input_reply", {"value": "EVIL"}, parent=b'{"msg_id": [1]}'
                )
            )
            _answer(hostile, prompt, "good")
            reply, stdout = _finish_cell(hostile, prompt)
            assert reply.status == "ok" and "got good" in stdout
            _assert_no_traceback(kernel.log_since(mark))
        finally:
            for peer in peers.values():
                peer.close()
            context.term()


def test_shutdown_request_without_restart_is_answered(tmp_path: Path) -> None:
    with logged_kernel(tmp_path) as kernel:
        info = kernel.manager.get_connection_info()
        context: zmq.Context[Any] = zmq.Context()
        forge = Forge(info)
        control = Peer(context, info, "control_port", forge)
        try:
            mark = kernel.log_mark()
            control.send(forge.message("shutdown_request", {}))
            msg_id = forge.last_id
            replies = control.read_until(msg_id, timeout=SHUTDOWN_TIMEOUT)
            assert replies[-1].msg_type == "shutdown_reply", replies
            _assert_no_traceback(kernel.log_since(mark))
        finally:
            control.close()
            context.term()


# -- fuzzing ------------------------------------------------------------------


_MSG_TYPES = [
    "execute_request",
    "complete_request",
    "inspect_request",
    "history_request",
    "is_complete_request",
    "comm_info_request",
    "kernel_info_request",
    "connect_request",
    "interrupt_request",
    "usage_request",
    "debug_request",
    "create_subshell_request",
    "list_subshell_request",
    "delete_subshell_request",
    "comm_open",
    "comm_msg",
    "comm_close",
    "input_reply",
    "no_such_request",
]
_FIELDS = [
    "code",
    "cursor_pos",
    "silent",
    "store_history",
    "user_expressions",
    "allow_stdin",
    "stop_on_error",
    "detail_level",
    "omit_sections",
    "hist_access_type",
    "output",
    "raw",
    "n",
    "start",
    "stop",
    "session",
    "pattern",
    "unique",
    "comm_id",
    "target_name",
    "data",
    "value",
    "msg_id",
    "msg_type",
    "version",
    "date",
    "subshell_id",
    "username",
]
# Code a well-signed fuzz message may run; nothing else is ever run.
_HARMLESS_CODE = ["", "pass", "1", "x = 1", "'a' * 3"]

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(_FIELDS) | st.text(max_size=6), inner, max_size=4
        )
    ),
    max_leaves=6,
)
_frame_bytes = st.binary(max_size=48) | _json_values.map(_json)
_contents = (
    st.dictionaries(st.sampled_from(_FIELDS), _json_values, max_size=5) | _json_values
)
_HEADER_FIELDS = ["msg_id", "msg_type", "username", "session", "date", "version"]


@st.composite
def _random_frames(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """Frames of any shape; never a valid signature, so they never run."""
    frames: list[bytes] = draw(st.lists(_frame_bytes, min_size=1, max_size=8))
    with_delimiter: bool = draw(st.booleans())
    if with_delimiter:
        frames.insert(draw(st.integers(0, len(frames))), DELIM)
    return frames, False


@st.composite
def _mutated_marker_message(draw: st.DrawFn, forge: Forge) -> tuple[list[bytes], bool]:
    """A valid execute_request printing MARK, broken in a way the signature covers.

    Every draw has fixed bounds: the frames differ from one run to the next
    (msg_id, date), and hypothesis wants the same draws for the same choices.
    """
    how = draw(
        st.sampled_from(["flip", "drop", "truncate", "wrong_key", "swap", "resign"])
    )
    index = draw(st.integers(1, 5))
    position = draw(st.integers(0, 2**16))
    xor = draw(st.integers(1, 255))
    pair = draw(st.sampled_from([(2, 5), (2, 3), (3, 5), (4, 5)]))
    signature = draw(st.binary(min_size=32, max_size=32)).hex().encode()

    code = f"print({MARK + '-fuzz'!r})"  # the fuzz test has a kernel of its own
    frames = forge.message(content=_execute(code))
    if how == "flip":
        frame = bytearray(frames[index])  # never empty: signature, JSON frames
        frame[position % len(frame)] ^= xor
        frames[index] = bytes(frame)
    elif how == "drop":
        del frames[index - 1]
    elif how == "truncate":
        frames = frames[:index]
    elif how == "wrong_key":
        frames[1] = forge.sign(frames[2:6], Sign.WRONG)
    elif how == "swap":
        i, j = pair
        frames[i], frames[j] = frames[j], frames[i]
    else:
        frames[1] = signature
    return frames, True


def _defang(header: Any, content: Any) -> None:
    """Keep a well-signed fuzz message from running anything but harmless code.

    Such a message is a valid request, so the kernel may rightly run it: its
    code, user expressions and v4 `user_variables` are replaced, and it never
    asks for a shutdown.
    """
    if isinstance(header, dict) and header.get("msg_type") == "shutdown_request":
        header["msg_type"] = "kernel_info_request"
    if isinstance(content, dict):
        if isinstance(content.get("code"), str):
            content["code"] = _HARMLESS_CODE[len(content["code"]) % len(_HARMLESS_CODE)]
        content.pop("user_variables", None)
        if "user_expressions" in content and isinstance(
            content["user_expressions"], dict
        ):
            content["user_expressions"] = {}


@st.composite
def _signed_random_message(draw: st.DrawFn, forge: Forge) -> tuple[list[bytes], bool]:
    """Correctly signed, with random header fields, parent, metadata and content."""
    msg_type = draw(st.sampled_from(_MSG_TYPES) | st.text(max_size=20))
    header: Any = forge.header(msg_type)
    if draw(st.integers(0, 9)) == 0:
        header = draw(_json_values)
    else:
        for name in draw(st.sets(st.sampled_from(_HEADER_FIELDS), max_size=2)):
            header.pop(name, None)
        header.update(
            draw(st.dictionaries(st.sampled_from(_FIELDS), _json_values, max_size=2))
        )
    content = draw(_contents)
    _defang(header, content)
    parent = draw(st.just(b"{}") | _frame_bytes)
    metadata = draw(st.just(b"{}") | _frame_bytes)
    return forge.message(
        header=header, content=content, parent=parent, metadata=metadata
    ), False


def _drain(socket: zmq.Socket[bytes], into: list[list[bytes]]) -> None:
    while socket.poll(0):
        into.append(socket.recv_multipart())


def test_fuzzed_messages_neither_run_nor_hurt_the_kernel(tmp_path: Path) -> None:
    """Thousands of hostile shell and control messages; then a normal cell works."""
    with logged_kernel(tmp_path) as kernel:
        info = kernel.manager.get_connection_info()
        context: zmq.Context[Any] = zmq.Context()
        forge = Forge(info)
        peers = {
            name: Peer(context, info, f"{name}_port", forge)
            for name in ("shell", "control")
        }
        iopub: zmq.Socket[bytes] = context.socket(zmq.SUB)
        iopub.linger = 0
        iopub.rcvhwm = 0  # keep every message: a marker must not be missed
        iopub.setsockopt(zmq.SUBSCRIBE, b"")
        iopub.connect(
            f"{info.get('transport', 'tcp')}://{info['ip']}:{info['iopub_port']}"
        )
        heard: list[list[bytes]] = []
        replies: list[list[bytes]] = []
        tree = kernel.tree()
        try:
            sent = _fuzz(forge, peers, iopub, heard, replies)
            for peer in peers.values():
                peer.sync()  # every fuzzed message was handled before this answer
            _assert_still_serves(kernel)
            _drain(iopub, heard)
            died = [p.pid for p in tree if is_gone(p)]
            assert not died, f"processes of the kernel died under fuzzing: {died}"
            assert all(not _mentions_mark(frames) for frames in heard), (
                "fuzzed code ran"
            )
            assert all(not _mentions_mark(frames) for frames in replies)
            assert sent >= FUZZ_MIN_MESSAGES, f"only {sent} messages were sent"
        finally:
            iopub.close(linger=0)
            for peer in peers.values():
                peer.close()
            context.term()


def _mentions_mark(frames: list[bytes]) -> bool:
    return any(MARK.encode() in frame for frame in frames[:6])


def _vary(frames: list[bytes], rnd: random.Random) -> list[bytes]:
    """A cheap random variant of a message that never carries the marker.

    Hypothesis draws the structured messages; these variants multiply them
    at little cost. Marker messages are never varied: a second edit could
    undo the first and make them valid again.
    """
    frames = list(frames)
    at = rnd.randrange(len(frames))
    edit = rnd.randrange(6)
    if edit == 0 and frames[at]:
        frame = bytearray(frames[at])
        frame[rnd.randrange(len(frame))] ^= rnd.randrange(1, 256)
        frames[at] = bytes(frame)
    elif edit == 1 and len(frames) > 1:
        del frames[at]
    elif edit == 2:
        frames.insert(at, frames[at])
    elif edit == 3:
        frames[at] = frames[at][: rnd.randrange(len(frames[at]) + 1)]
    elif edit == 4:
        frames[at] = rnd.randbytes(rnd.randrange(64))
    else:
        frames.insert(at, rnd.choice([DELIM, b"", b"{}", b"[]", b"null", b"\xff"]))
    return frames


def _fuzz(
    forge: Forge,
    peers: dict[str, Peer],
    iopub: zmq.Socket[bytes],
    heard: list[list[bytes]],
    replies: list[list[bytes]],
) -> int:
    """Send the fuzzed messages; return how many were sent."""
    messages = st.one_of(
        _random_frames(), _mutated_marker_message(forge), _signed_random_message(forge)
    )
    channels = sorted(peers)
    sent = [0]

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        message=messages,
        channel=st.sampled_from(channels),
        rnd=st.randoms(use_true_random=False),
    )
    def send_one(
        message: tuple[list[bytes], bool], channel: str, rnd: random.Random
    ) -> None:
        frames, carries_mark = message
        peers[channel].send(frames)
        sent[0] += 1
        variants = 0 if carries_mark else rnd.randint(1, FUZZ_MAX_VARIANTS)
        for _ in range(variants):
            peers[rnd.choice(channels)].send(_vary(frames, rnd))
            sent[0] += 1
        if sent[0] % FUZZ_DRAIN_EVERY < 1 + variants:
            _drain(iopub, heard)
            for peer in peers.values():
                _drain(peer.socket, replies)

    send_one()
    return sent[0]
