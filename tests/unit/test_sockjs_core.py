"""The SockJS core (app/sockjs/) alone: frames, JSON encoding, and the session's state machine,
driven with a fake clock; and proof that it is sans-I/O, as tests/unit/test_stomp_sans_io.py
proves it of app/stomp/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.sockjs import (
    ANOTHER_CONNECTION,
    INTERRUPTED,
    TRANSITIONS,
    WIRES,
    Attach,
    BrokenJson,
    PayloadExpected,
    SessionConfig,
    SockJSSession,
    State,
    close_frame,
    decode_messages,
    encode_json,
    message_frame,
    valid_callback,
)

APP_DIR = Path(__file__).resolve().parents[2] / "app"
SOURCES = sorted((APP_DIR / "sockjs").glob("*.py"))
BLOCKED = (
    "flask",
    "werkzeug",
    "gevent",
    "geventwebsocket",
    "redis",
    "socket",
    "_socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
)
NEVER_IN_SOURCE = set(BLOCKED) | {"app", "time", "datetime", "threading", "logging"}
CONFIG = SessionConfig(heartbeat_interval=25.0, disconnect_delay=5.0, response_limit=4096)


# -- sans-I/O ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_source_imports_only_itself_and_pure_stdlib(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level in (0, 1), f"{path.name}:{node.lineno} imports above app.sockjs"
            names = [node.module or ""] if node.level == 0 else []
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in NEVER_IN_SOURCE, f"{path.name}:{node.lineno} imports {name}"


SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, types
    BLOCKED = set(sys.argv[2].split(","))
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"sans-I/O: {name} is blocked")
            return None
    sys.meta_path.insert(0, Blocker())
    stub = types.ModuleType("app")
    stub.__path__ = [sys.argv[1]]
    sys.modules["app"] = stub
    import app.sockjs as sockjs
    session = sockjs.SockJSSession("s", sockjs.SessionConfig(), now=0.0)
    answer, receiver = session.attach(0.0)
    session.send("hi")
    assert session.frames(0.0) == ["o", 'a["hi"]'], session.frames(0.0)
    session.receive(sockjs.decode_messages('["x"]'))
    assert session.messages_received() == ["x"]
    session.close()
    assert session.frames(1.0) == ['c[3000,"Go away!"]']
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("sans-io ok")
    """
)


def test_imports_and_runs_with_io_modules_blocked():
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SCRIPT, str(APP_DIR), ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sans-io ok"


# -- framing -----------------------------------------------------------------------------------


def test_frames_as_the_spec_writes_them():
    assert message_frame(["a", 'b"c']) == 'a["a","b\\"c"]'
    assert close_frame(3000, "Go away!") == 'c[3000,"Go away!"]'
    assert close_frame(*ANOTHER_CONNECTION) == 'c[2010,"Another connection still open"]'


@pytest.mark.parametrize(
    "char",
    [
        "\x00",
        "\x1f",
        "\u200c",
        "\u200f",
        "\u2028",
        "\u202f",
        "\u2060",
        "\u206f",
        "\ufff0",
        "\uffff",
        "\ud800",
        "\udfff",
    ],
)
def test_the_characters_the_server_must_escape(char):
    assert encode_json(char) == '"\\u%04x"' % ord(char)


@pytest.mark.parametrize("char", ["é", "한", "\u200b", "\u2030", "\u2070", "\uffef", "😀"])
def test_everything_else_goes_as_itself(char):
    assert encode_json(char) == f'"{char}"'


@given(st.lists(st.text()))
def test_encoded_messages_decode_back(messages):
    frame = message_frame(messages)
    assert frame.startswith("a")
    assert json.loads(frame[1:]) == messages
    assert not any(ch in frame for ch in "\u2028\u2029\x00\n")  # safe on every wire form


def test_decode_messages():
    assert decode_messages('["a","b"]') == ["a", "b"]
    assert decode_messages('"a"') == ["a"]
    assert decode_messages("[]") == []
    with pytest.raises(BrokenJson):
        decode_messages('["a')
    for payload in ("", "[1]", "{}", "null", "3"):
        with pytest.raises(PayloadExpected):
            decode_messages(payload)


def test_wire_forms():
    assert WIRES["xhr"].wrap("o", "") == "o\n"
    assert WIRES["xhr_streaming"].prelude("") == "h" * 2048 + "\n"
    assert WIRES["eventsource"].wrap('a["x"]', "") == 'data: a["x"]\r\n\r\n'
    assert WIRES["htmlfile"].wrap('a["x"]', "cb") == '<script>\np("a[\\"x\\"]");\n</script>\r\n'
    assert WIRES["jsonp"].wrap("o", "cb") == 'cb("o");\r\n'
    assert len(WIRES["htmlfile"].prelude("cb")) > 1024
    assert valid_callback("_jp.a1b2c3.x") and not valid_callback("a(b)") and not valid_callback("")


# -- the session -------------------------------------------------------------------------------


def attached(now=0.0):
    session = SockJSSession("id", CONFIG, now)
    answer, receiver = session.attach(now)
    assert answer is Attach.RECEIVE
    return session, receiver


def test_open_then_messages_in_one_frame_then_close():
    session, receiver = attached()
    session.send("a")
    session.send("b")
    assert session.frames(0.0) == ["o", 'a["a","b"]']
    assert session.state is State.OPEN
    session.close(3000, "bye")
    session.send("too late")
    assert session.frames(1.0) == ['c[3000,"bye"]'] and session.finished
    assert session.attach(2.0) == (Attach.CLOSED, 0)
    assert session.refusal_frame(Attach.CLOSED) == 'c[3000,"bye"]'


def test_a_poll_takes_one_frame_at_a_time():
    session, receiver = attached()
    session.send("a")
    assert session.frames(0.0, one=True) == ["o"]
    assert session.frames(0.0, one=True) == ['a["a"]']
    session.close()
    assert session.frames(0.0, one=True) == ['c[3000,"Go away!"]']


def test_an_application_that_closes_at_once_still_opens_first():
    session = SockJSSession("id", CONFIG, 0.0)
    session.close()
    session.attach(0.0)
    assert session.frames(0.0) == ["o", 'c[3000,"Go away!"]']


def test_one_receiver_at_a_time():
    session, receiver = attached()
    assert session.attach(0.0) == (Attach.BUSY, 0)
    assert session.refusal_frame(Attach.BUSY) == 'c[2010,"Another connection still open"]'
    session.detach(receiver, 1.0)
    assert session.attach(1.5)[0] is Attach.RECEIVE
    assert not session.closed


def test_an_interrupted_receiver_closes_the_session_with_1002():
    session, receiver = attached()
    session.frames(0.0)
    session.detach(receiver, 1.0, interrupted=True)
    assert session.closed and session.close_reason == INTERRUPTED
    assert session.attach(1.1) == (Attach.CLOSED, 0)
    assert session.refusal_frame(Attach.CLOSED) == 'c[1002,"Connection interrupted"]'


def test_heartbeat_after_the_interval_without_frames():
    session, receiver = attached()
    session.frames(0.0)
    assert session.next_deadline() == 25.0
    session.tick(24.9)
    assert session.frames(24.9) == []
    session.tick(25.0)
    assert session.next_deadline() is None  # due: nothing more until written
    assert session.frames(25.0) == ["h"]
    assert session.next_deadline() == 50.0
    session.send("m")  # a message resets the clock
    session.frames(40.0)
    assert session.next_deadline() == 65.0


def test_heartbeats_can_be_turned_off():
    session, receiver = attached()
    session.frames(0.0)
    session.disable_heartbeat()
    session.tick(100.0)
    assert session.frames(100.0) == [] and session.next_deadline() is None


def test_disconnect_delay_expires_a_session_without_receiver():
    session, receiver = attached()
    session.frames(0.0)
    session.detach(receiver, 10.0)
    assert session.next_deadline() == 15.0
    session.tick(14.9)
    assert not session.expired
    session.tick(15.0)
    assert session.expired and session.closed and session.next_deadline() is None
    assert session.attach(16.0) == (Attach.CLOSED, 0)


def test_messages_wait_for_the_next_receiver():
    session, receiver = attached()
    session.frames(0.0)
    session.detach(receiver, 1.0)
    session.send("while away")
    assert session.pending_bytes == len("while away")
    _, receiver = session.attach(2.0)
    assert session.frames(2.0) == ['a["while away"]'] and session.pending_bytes == 0


def test_transitions_table_covers_every_state():
    states = {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values())
    assert states == set(State)
