"""gunicorn's access-log atoms carry no credential (app/server/access_log.py).

The end-to-end proof (a real gunicorn writing its access log) is in
tests/e2e/test_auth_urls.py; here each atom and each way to spell a parameter.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from app.auth.access import URL_TOKEN_PARAMS
from app.server.access_log import REDACTED, SECRET_PARAMS, RedactingLogger, redact_query, redact_uri

SECRET = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln"


def test_the_names_are_the_apps():
    assert SECRET_PARAMS == {*URL_TOKEN_PARAMS, "ticket"}


def test_the_module_imports_nothing_from_the_app():
    code = (
        "import sys, app.server.access_log; "
        "print(sorted(m for m in sys.modules if m.startswith('app') and m not in ('app', 'app.server', "
        "'app.server.access_log')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "query, expected",
    [
        (f"ticket={SECRET}", f"ticket={REDACTED}"),
        (f"since=1-2&token={SECRET}&limit=5", f"since=1-2&token={REDACTED}&limit=5"),
        (f"access_token={SECRET}&ticket={SECRET}", f"access_token={REDACTED}&ticket={REDACTED}"),
        (f"TOKEN={SECRET}", f"TOKEN={REDACTED}"),
        (f"%74oken={SECRET}", f"%74oken={REDACTED}"),  # the app decodes names, so must we
        (f"access%5Ftoken={SECRET}", f"access%5Ftoken={REDACTED}"),
        (f"token={SECRET}&token={SECRET}&token=", f"token={REDACTED}&token={REDACTED}&token={REDACTED}"),
        ("token", "token"),
        ("since=1-2&limit=5", "since=1-2&limit=5"),
        ("tokens=x&myticket=y", "tokens=x&myticket=y"),
        ("", ""),
    ],
)
def test_query_values_are_redacted(query, expected):
    assert redact_query(query) == expected


def test_uris_keep_everything_but_the_value():
    assert redact_uri(f"/api/topics/t/stream?ticket={SECRET}") == f"/api/topics/t/stream?ticket={REDACTED}"
    assert redact_uri(f"http://h/p?a=1&token={SECRET}#x") == f"http://h/p?a=1&token={REDACTED}#x"
    assert redact_uri("/healthz") == "/healthz"


def access_line(environ_extra: dict, headers: list, response_headers: list = ()) -> str:
    """The access-log line RedactingLogger writes for one request (default format, every atom)."""
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = RedactingLogger(cfg)
    raw_uri = environ_extra.pop("RAW_URI")
    path, _, query = raw_uri.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": raw_uri,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        **environ_extra,
    }
    resp = SimpleNamespace(status="400 BAD REQUEST", headers=list(response_headers), sent=10)
    atoms = logger.atoms(resp, headers, environ, datetime.timedelta(seconds=1))
    return repr(atoms)


def test_every_atom_is_clean():
    headers = [
        ("Authorization", f"Bearer {SECRET}"),
        ("Cookie", f"switchboard_token={SECRET}"),
        ("Referer", f"http://x/sse?ticket={SECRET}"),
    ]
    line = access_line(
        {
            "RAW_URI": f"/api/topics/t/stream?since=1&ticket={SECRET}",
            "HTTP_AUTHORIZATION": f"Bearer {SECRET}",
            "HTTP_COOKIE": f"switchboard_token={SECRET}",
            "HTTP_REFERER": f"http://x/sse?ticket={SECRET}",
        },
        headers,
        [("Set-Cookie", f"switchboard_token={SECRET}; HttpOnly")],
    )
    assert SECRET not in line
    assert "since=1&ticket=[redacted]" in line and "Bearer [redacted]" in line
