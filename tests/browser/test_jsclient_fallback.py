"""switchboard.js's transport fallback in real Chromium, behind real nginx variants.

* the shipped nginx.conf: the WebSocket, first time;
* nginx that drops the Upgrade headers (tests/support/nginx.py, no_upgrade_headers): the
  socket never opens, /healthz answers, so the library moves on to SSE;
* the same plus a buffering, gzipping proxy on the stream (buffering_with_gzip): no byte of
  the stream arrives within the connect timeout either, so it ends on long polling.

Each time the chosen transport carries an event published by a third party and one the page
publishes itself (over HTTP unless the socket is open).
"""

from __future__ import annotations

import pytest

from tests.browser.helpers import ms, publish
from tests.support.nginx import Nginx, buffering_with_gzip, no_upgrade_headers
from tests.support.servers import Gunicorn

pytestmark = [pytest.mark.browser, pytest.mark.nginx]

OPEN = """async ({topic, options}) => {
  const { Switchboard } = await import("/static/js/switchboard.js");
  const sb = new Switchboard(location.origin, options);
  const seen = window.seen = { transports: [], errors: [], events: [] };
  sb.on("transport", (d) => seen.transports.push(d.transport));
  sb.on("error", (e) => seen.errors.push(`${e.code}:${e.transport}`));
  sb.subscribe(topic, { onEvent: (e, info) => seen.events.push([e.id, info.transport]) });
  window.sb = sb;
}"""
OPTIONS = {"connectTimeout": 3000, "backoff": {"base": 100, "cap": 1000}}


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("jsclient-fallback"), env={"SWITCHBOARD_BEHIND_PROXY": "1"}) as server:
        yield server


def both(config: str) -> str:
    return buffering_with_gzip(no_upgrade_headers(config))


@pytest.mark.parametrize(
    "edit, expected, first_error",
    [
        pytest.param(None, "websocket", None, id="shipped"),
        pytest.param(no_upgrade_headers, "sse", "websocket", id="no-upgrade"),
        pytest.param(both, "long-polling", "sse", id="no-upgrade-and-buffering"),
    ],
)
def test_fallback_ends_on_a_working_transport(app_server, new_user, console_errors, edit, expected, first_error):
    if edit is not None:
        console_errors.allow_network()  # the refused socket, the abandoned stream
    nginx = Nginx(app_server.port, edit=edit).start()
    try:
        page = new_user().new_page()
        page.goto(nginx.url + "/")
        topic = f"fallback-{expected}"
        page.evaluate(OPEN, {"topic": topic, "options": OPTIONS})
        page.wait_for_function("() => window.seen.transports.length > 0", timeout=ms(30))
        assert page.evaluate("window.seen.transports") == [expected]
        assert page.evaluate("window.sb.transport") == expected
        errors = page.evaluate("window.seen.errors")
        if first_error is None:
            assert errors == []
        else:
            # Every transport before the chosen one failed and said so, with its name.
            assert errors and all(e.split(":")[1] in ("websocket", "sse") for e in errors), errors
            assert any(e.endswith(f":{first_error}") for e in errors), errors
        # Chosen once, for good: a third party's event and the page's own both arrive over it.
        event = publish(nginx.url, topic, {"text": "from outside"})
        own = page.evaluate("async (t) => (await window.sb.publish(t, {text: 'from the page'})).id", topic)
        page.wait_for_function("(n) => window.seen.events.length >= n", arg=2, timeout=ms(15))
        assert page.evaluate("window.seen.events") == [[event["id"], expected], [own, expected]]
        assert page.evaluate("window.seen.transports") == [expected]
        page.evaluate("window.sb.close()")
    finally:
        nginx.stop()
