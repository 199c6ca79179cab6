"""A SockJS endpoint over HTTP: its URLs, its sessions, and the HTTP transports.

One :class:`SockJSService` per mount (``/stomp-sockjs``, ``/websocket/stomp``,
``/ws-sockjs``; the protocol test app mounts four more). Under its prefix it answers
(SockJS protocol 0.3.3):

=================================  ======  ===================================================
``<prefix>`` and ``<prefix>/``     GET     the greeting ``Welcome to SockJS!``
``<prefix>/info``                  GET     ``{"websocket", "cookie_needed", "origins", "entropy"}``
``<prefix>/iframe[-v].html``       GET     the iframe page (cacheable, ETag)
``<prefix>/websocket``             GET     a raw WebSocket (no SockJS framing; sockjs_ws.py)
``<prefix>/<s>/<id>/websocket``    GET     the SockJS-framed WebSocket (sockjs_ws.py)
``<prefix>/<s>/<id>/xhr``          POST    polling: one frame per request
``<prefix>/<s>/<id>/xhr_streaming``POST    streaming: 2 KiB prelude, frames as lines
``<prefix>/<s>/<id>/eventsource``  GET     streaming as Server-Sent Events
``<prefix>/<s>/<id>/htmlfile``     GET     streaming as ``<script>`` tags (``?c=callback``)
``<prefix>/<s>/<id>/jsonp``        GET     polling as a JSONP call (``?c=callback``)
``<prefix>/<s>/<id>/xhr_send``     POST    the client's messages (a JSON array of strings)
``<prefix>/<s>/<id>/jsonp_send``   POST    the same, as a form field ``d`` or the raw body
=================================  ======  ===================================================

The first receiving request for an unknown session id makes the session: it passes the
mount's admission (origin, stream limits, access control: the same as a WebSocket
handshake), then the mount's handler runs on the session's channel in a greenlet of its
own for the session's life. A session lives in this worker only (the README's "SockJS
with several workers": sticky sessions).

Every SockJS protocol error is answered in one place (:meth:`SockJSService._protocol_error`):
500 with the spec's text, 404 for a session this worker does not hold.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import parse_qs

import gevent
from flask import Flask, Response, current_app, request

from ..auth import AccessError
from ..errors import ApiError, error_response
from ..limits import Limits
from ..metrics import Metrics
from ..server.handshake import DEFAULT_POLICY, WebSocketPolicy
from ..sockjs import (
    GO_AWAY,
    WIRES,
    Attach,
    BrokenJson,
    NoSuchSession,
    PayloadExpected,
    SessionConfig,
    SockJSError,
    decode_messages,
    iframe_page,
    valid_callback,
)
from .sockjs_channel import SockJSChannel
from .wsio import ENVIRON_CLIENT_GONE, origin_allowed

__all__ = ["Admission", "SessionContext", "SockJSService"]

log = logging.getLogger(__name__)

NOT_CACHED = "no-store, no-cache, must-revalidate, max-age=0"
ONE_YEAR = 31_536_000
#: How often a parked receiver checks that its client is still there (a gone poller must
#: free the session at once: its next poll would otherwise get "Another connection still open").
CLIENT_CHECK = 1.0

_SEGMENT = r"[^/.]+"
_SESSION_URL = re.compile(rf"({_SEGMENT})/({_SEGMENT})/([a-z_]+)\Z")
_IFRAME_URL = re.compile(r"iframe[0-9a-z_.-]*\.html\Z")


@dataclass(frozen=True)
class SessionContext:
    """What the request that made a session established, for the mount's handler.

    Attributes:
        session_id: the SockJS session id (never shown to the client application).
        transport: ``xhr_streaming``, ``websocket``, ``raw-websocket``, ...
        sender: the name stamped on what the session publishes.
        identity: what its credentials proved (``app.auth.Identity``), or ``None``.
        client: the client's address, for logs and per-address limits.
        same_user: ``same_user(environ)`` tells whether a later request of the session comes
            from whoever opened it (see ``sockjs_mounts.admission``); anyone, by default.
    """

    session_id: str
    transport: str
    sender: str
    identity: Any
    client: str
    same_user: Callable[[Mapping], bool] = lambda environ: True


#: ``admit(environ, transport, session_id, take_slot)`` -> ``(context, release)``: checks the
#: request (stream limits when ``take_slot``; credentials), raising an ``ApiError`` (a
#: ``LimitExceeded``) or an ``AccessError`` to refuse it. ``release()`` runs when the session's
#: handler ends.
Admission = Callable[[Mapping, str, str, bool], "tuple[SessionContext, Callable[[], None]]"]
#: ``handler(channel, context)``: the application on one session, until ``channel.receive()``
#: returns ``None``. ``channel`` is a :class:`SockJSChannel`, or the WebSocket itself on the raw
#: ``<prefix>/websocket`` URL.
Handler = Callable[[Any, SessionContext], None]


class SockJSService:
    """One SockJS endpoint.

    Args:
        name: a short name for its Flask endpoints (``stomp``).
        prefix: the base URL (``/stomp-sockjs``), never ending with a slash.
        handler: the application on each session.
        admit: the admission check for a new session.
        config: heartbeats, disconnect delay, streaming response limit.
        websocket: whether the WebSocket transports are on (``/info`` says so).
        cookie_needed: set ``JSESSIONID`` on session URLs (for load balancers that stick on it).
        sockjs_url: where the iframe page loads sockjs-client from.
        max_body: the largest send body, in bytes (larger: 413).
        write_timeout: seconds a sender may wait for a receiver to take its messages.
        protocols: the WebSocket sub-protocols spoken on its WebSocket URLs.
        origins: the policy whose Origin rules (``allowed_origins``, ``trust_forwarded``) apply here too.
        limits, metrics: where a body over ``max_body`` and an access refusal are counted, if anywhere.
    """

    def __init__(
        self,
        name: str,
        prefix: str,
        handler: Handler,
        admit: Admission,
        config: SessionConfig,
        *,
        websocket: bool = True,
        cookie_needed: bool = False,
        sockjs_url: str = "/static/vendor/sockjs-client/sockjs.min.js",
        max_body: int = 1024 * 1024,
        write_timeout: float | None = 30.0,
        protocols: tuple[str, ...] = (),
        origins: WebSocketPolicy = DEFAULT_POLICY,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"a SockJS prefix starts with '/' and does not end with one: {prefix!r}")
        self.name = name
        self.prefix = prefix
        self.handler = handler
        self.admit = admit
        self.config = config
        self.websocket = websocket
        self.cookie_needed = cookie_needed
        self.sockjs_url = sockjs_url
        self.max_body = max_body
        self.write_timeout = write_timeout
        self.protocols = protocols
        self.origins = origins
        self.limits = limits
        self.metrics = metrics
        self.clock = clock
        self.sessions: dict[str, SockJSChannel] = {}
        self._handlers: dict[SockJSChannel, gevent.Greenlet] = {}
        self._contexts: dict[SockJSChannel, SessionContext] = {}  # of the registered sessions
        page = iframe_page(sockjs_url)
        self._iframe = page.encode("utf-8")
        self._iframe_etag = '"' + hashlib.sha256(self._iframe).hexdigest()[:32] + '"'
        # The iframe page's one inline script, allowed by its hash (our pages' CSP allows none).
        script = page.split("<script>", 1)[1].split("</script>", 1)[0]
        self._iframe_csp = (
            "default-src 'self'; script-src 'self' 'sha256-"
            + _b64(hashlib.sha256(script.encode("utf-8")).digest())
            + "'; frame-ancestors 'self'"
        )
        # (method, handler) per transport; OPTIONS is answered for the CORS ones.
        self._transports: dict[str, tuple[str, Callable[[str, str], Response]]] = {
            "xhr": ("POST", self._receive),
            "xhr_streaming": ("POST", self._receive),
            "eventsource": ("GET", self._receive),
            "htmlfile": ("GET", self._receive),
            "jsonp": ("GET", self._receive),
            "xhr_send": ("POST", self._xhr_send),
            "jsonp_send": ("POST", self._jsonp_send),
            "websocket": ("GET", self._not_upgraded),
        }
        self._cors_options = {"xhr", "xhr_streaming", "xhr_send"}

    # -- setup ------------------------------------------------------------------------------

    def register(self, app: Flask) -> None:
        """Add the service's URL rules to ``app`` (the WebSocket ones: :mod:`.sockjs_ws`)."""
        from . import sockjs_ws  # the WebSocket side imports this module

        endpoint = f"sockjs_{self.name}"
        methods = ["GET", "POST", "OPTIONS", "PUT", "DELETE"]
        app.add_url_rule(self.prefix, f"{endpoint}_greeting", self._greeting, methods=methods)
        app.add_url_rule(self.prefix + "/", f"{endpoint}_greeting_slash", self._greeting, methods=methods)
        app.add_url_rule(self.prefix + "/<path:rest>", f"{endpoint}_route", self._route, methods=methods)
        if self.websocket:
            app.add_url_rule(
                self.prefix + "/<server>/<session>/websocket",
                f"{endpoint}_websocket",
                lambda server, session: sockjs_ws.serve_framed(self, session),
                websocket=True,
            )
            app.add_url_rule(
                self.prefix + "/websocket",
                f"{endpoint}_raw_websocket",
                lambda: sockjs_ws.serve_raw(self),
                websocket=True,
            )

    def websocket_paths(self) -> dict[str, tuple[str, ...]]:
        """The WebSocket policy's entries for this service (``*`` is one URL segment)."""
        if not self.websocket:
            return {}
        return {self.prefix + "/*/*/websocket": self.protocols, self.prefix + "/websocket": self.protocols}

    # -- sessions ---------------------------------------------------------------------------

    def open_session(
        self,
        session_id: str,
        transport: str,
        context: SessionContext,
        release: Callable[[], None],
        register: bool = True,
    ) -> SockJSChannel:
        """Make a session and start its handler; ``register``: reachable by later requests."""
        channel = SockJSChannel(
            session_id,
            transport,
            self.config,
            self.write_timeout,
            self.clock,
            on_expired=self._forget if register else None,
        )
        if register:
            self.sessions[session_id] = channel
            self._contexts[channel] = context
        self._handlers[channel] = gevent.spawn(self._run_handler, channel, context, release)
        return channel

    def _run_handler(self, channel: SockJSChannel, context: SessionContext, release: Callable[[], None]) -> None:
        try:
            self.handler(channel, context)
        except Exception:
            log.error("SockJS handler of %s failed (session %s)", self.prefix, channel.session_id, exc_info=True)
            channel.close(1011, "internal error")
        finally:
            self._handlers.pop(channel, None)
            release()
            if not channel.closed:
                channel.close(*GO_AWAY)

    def _forget(self, channel: SockJSChannel) -> None:
        self._contexts.pop(channel, None)
        if self.sessions.get(channel.session_id) is channel:
            del self.sessions[channel.session_id]

    def shutdown(self, timeout: float) -> None:
        """End every session (the handlers have had their say: STOMP ERROR frames, /ws errors)."""
        channels = list(self._handlers) + list(self.sessions.values())
        for channel in channels:
            channel.close(1001, "server shutting down")
        handlers = list(self._handlers.values())
        gevent.joinall(handlers, timeout=timeout)
        for channel in channels:
            channel.kill()

    # -- views ------------------------------------------------------------------------------

    def _greeting(self) -> Response:
        """Greet a SockJS client (and a curious human)."""
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed("GET")
        return Response("Welcome to SockJS!\n", content_type="text/plain; charset=UTF-8")

    def _route(self, rest: str) -> Response:
        """Dispatch a URL under the prefix: info, iframe, raw WebSocket, or a session transport."""
        refusal = self._origin_refusal()
        if refusal is not None:
            return refusal
        if rest == "info":
            return self._info()
        if _IFRAME_URL.match(rest):
            return self._iframe_page()
        if rest == "websocket":
            return self._not_upgraded("", "websocket") if self.websocket else _not_found()
        match = _SESSION_URL.match(rest)
        if match is None:
            return _not_found()
        _server, session_id, transport = match.groups()
        found = self._transports.get(transport)
        if found is None or (transport == "websocket" and not self.websocket):
            return _not_found()
        method, view = found
        if request.method == "OPTIONS" and transport in self._cors_options:
            return self._options("OPTIONS, POST")
        if request.method != method:
            return _method_not_allowed(method)
        try:
            return view(session_id, transport)
        except SockJSError as exc:
            return self._protocol_error(exc)

    def _origin_refusal(self) -> Response | None:
        # The same check as a WebSocket handshake's (wsio.origin_allowed): a page of another
        # site may not drive a session with this visitor's cookies.
        if origin_allowed(request.environ, self.origins):
            return None
        return self._cors(error_response(403, "forbidden_origin", "this origin may not open a SockJS session here"))

    def _info(self) -> Response:
        if request.method == "OPTIONS":
            return self._options("OPTIONS, GET")
        if request.method != "GET":
            return _method_not_allowed("OPTIONS, GET")
        response = current_app.json.response(
            {
                "websocket": self.websocket,
                "cookie_needed": self.cookie_needed,
                "origins": ["*:*"],
                "entropy": secrets.randbits(32),
            }
        )
        response.content_type = "application/json; charset=UTF-8"
        response.headers["Cache-Control"] = NOT_CACHED
        return self._cors(response)

    def _iframe_page(self) -> Response:
        if request.method != "GET":
            return _method_not_allowed("GET")
        if request.headers.get("If-None-Match") == self._iframe_etag:
            response = Response(status=304)
            del response.headers["Content-Type"]
        else:
            response = Response(self._iframe, content_type="text/html; charset=UTF-8")
            response.headers["Content-Security-Policy"] = self._iframe_csp
            response.headers["X-Frame-Options"] = "SAMEORIGIN"  # it is meant to be framed, by us
        response.headers["ETag"] = self._iframe_etag
        _cache_for_a_year(response)
        return response

    def _options(self, methods: str) -> Response:
        response = Response(status=204)
        del response.headers["Content-Type"]
        _cache_for_a_year(response)
        response.headers["Access-Control-Max-Age"] = str(ONE_YEAR)
        response.headers["Access-Control-Allow-Methods"] = methods
        return self._cors(response)

    def _not_upgraded(self, session_id: str, transport: str) -> Response:
        # A WebSocket URL reached by plain HTTP (or through a proxy that dropped the upgrade).
        if request.method != "GET":
            return _method_not_allowed("GET")
        upgrade = request.headers.get("Upgrade", "").lower()
        text = 'Can "Upgrade" only to "WebSocket".' if upgrade != "websocket" else '"Connection" must be "Upgrade".'
        return Response(text, status=400, content_type="text/plain; charset=UTF-8")

    # -- receiving transports ---------------------------------------------------------------

    def _receive(self, session_id: str, transport: str) -> Response:
        wire = WIRES[transport]
        callback = ""
        if transport in ("htmlfile", "jsonp"):
            callback = request.args.get("c") or request.args.get("callback") or ""
            if not callback:
                return _text(500, '"callback" parameter required')
            if not valid_callback(callback):
                return _text(500, 'invalid "callback" parameter')
        channel = self._owned_session(session_id)
        if channel is None:
            try:
                context, release = self.admit(request.environ, transport, session_id, True)
            except (ApiError, AccessError) as exc:
                return self._refused(exc)
            channel = self.open_session(session_id, transport, context, release)
        channel.requests += 1
        answer, receiver = channel.attach()
        headers = self._session_headers(transport)
        if answer is not Attach.RECEIVE:  # 2010, or the ended session's own close frame
            parts = [wire.prelude(callback), wire.wrap(channel.core.refusal_frame(answer), callback)]
            # A streaming client reads it as it reads a stream: prelude, then the frame.
            body = (part.encode("utf-8") for part in parts) if wire.streaming else "".join(parts)
            return self._cors(Response(body, content_type=wire.content_type, headers=headers))
        gone = request.environ.get(ENVIRON_CLIENT_GONE)
        if not wire.streaming:
            frame = self._poll(channel, receiver, gone)
            body = "" if frame is None else wire.wrap(frame, callback)
            return self._cors(Response(body, content_type=wire.content_type, headers=headers))
        headers["X-Accel-Buffering"] = "no"  # nginx streams it, whatever proxy_buffering says
        if request.environ.get("SERVER_PROTOCOL") == "HTTP/1.0":
            # No chunking in HTTP/1.0 and no length known: the end of the body is the end of
            # the connection (pywsgi would otherwise answer a keep-alive request with keep-alive).
            headers["Connection"] = "close"
        stream = self._stream(channel, receiver, wire.prelude(callback), lambda f: wire.wrap(f, callback), gone)
        response = Response(stream, content_type=wire.content_type, headers=headers, direct_passthrough=True)
        if transport == "htmlfile":
            # Its frames are inline <script>s of our own JSON and a checked callback name.
            response.headers["Content-Security-Policy"] = (
                "default-src 'none'; script-src 'unsafe-inline'; frame-ancestors 'self'"
            )
            response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return self._cors(response)

    def _poll(self, channel: SockJSChannel, receiver: int, gone: Callable[[], bool] | None) -> str | None:
        """The one frame a polling request answers with (``None``: the client left)."""
        interrupted = True
        try:
            while True:
                frames = channel.frames(one=True)
                if frames:
                    interrupted = False
                    return frames[0]
                channel.wait(CLIENT_CHECK)
                if gone is not None and gone():
                    return None
        finally:
            channel.detach(receiver, interrupted)

    def _stream(
        self,
        channel: SockJSChannel,
        receiver: int,
        prelude: str,
        wrap: Callable[[str], str],
        gone: Callable[[], bool] | None,
    ) -> Iterator[bytes]:
        """A streaming response: the prelude, then frames until the close frame or the size limit."""
        interrupted = True  # until the response ends on our terms
        sent = 0
        try:
            yield prelude.encode("utf-8")
            while True:
                frames = channel.frames()
                if frames:
                    chunk = "".join(wrap(frame) for frame in frames).encode("utf-8")
                    yield chunk  # a client that went away fails this write: GeneratorExit here
                    sent += len(chunk)
                    if channel.core.finished or sent >= self.config.response_limit:
                        interrupted = False
                        return
                    continue
                channel.wait(CLIENT_CHECK)
                if gone is not None and gone():
                    return
        finally:
            channel.detach(receiver, interrupted)

    # -- sending transports -----------------------------------------------------------------

    def _xhr_send(self, session_id: str, transport: str) -> Response:
        channel = self._session_for_send(session_id)
        body = self._body()
        if isinstance(body, Response):
            return body
        channel.deliver(decode_messages(_text_of(body)))
        response = Response(
            status=204, content_type="text/plain; charset=UTF-8", headers=self._session_headers(transport)
        )
        return self._cors(response)

    def _jsonp_send(self, session_id: str, transport: str) -> Response:
        channel = self._session_for_send(session_id)
        body = self._body()
        if isinstance(body, Response):
            return body
        text = _text_of(body)
        if request.mimetype == "application/x-www-form-urlencoded":
            values = parse_qs(text, keep_blank_values=True).get("d")
            if not values or not values[0]:
                raise PayloadExpected()
            text = values[0]
        channel.deliver(decode_messages(text))
        return self._cors(
            Response("ok", content_type="text/plain; charset=UTF-8", headers=self._session_headers(transport))
        )

    def _owned_session(self, session_id: str) -> SockJSChannel | None:
        """The session, unless this request is not from whoever opened it: then, as Spring
        answers "the user for the session does not match the user for the request", a 404
        (a session id travels in URLs, so logs show it; it must not let anyone else in)."""
        channel = self.sessions.get(session_id)
        if channel is not None and not self._contexts[channel].same_user(request.environ):
            raise NoSuchSession()
        return channel

    def _session_for_send(self, session_id: str) -> SockJSChannel:
        channel = self._owned_session(session_id)
        if channel is None or channel.closed:
            raise NoSuchSession()
        channel.requests += 1
        return channel

    def _body(self) -> bytes | Response:
        length = request.content_length
        if length is not None and length > self.max_body:
            return self._too_large()
        body = request.stream.read(self.max_body + 1)
        if len(body) > self.max_body:
            return self._too_large()
        return body

    def _too_large(self) -> Response:
        if self.limits is not None:
            self.limits.rejected("message_size")
        response = error_response(
            413,
            "too_large",
            f"a send body is at most {self.max_body} bytes; nothing of "
            "this one was delivered, and the session stays open",
        )
        response.headers["Connection"] = "close"  # the unread rest of the body must not become a request
        return self._cors(response)

    # -- answers ----------------------------------------------------------------------------

    def _protocol_error(self, exc: SockJSError) -> Response:
        """The one place a SockJS protocol error becomes an HTTP answer."""
        status = 404 if isinstance(exc, NoSuchSession) else 500
        return self._cors(_text(status, exc.text))

    def _refused(self, exc: ApiError | AccessError) -> Response:
        """A session refused at admission: the same status and JSON as the WebSocket handshake's."""
        if isinstance(exc, AccessError):
            if self.metrics is not None:
                self.metrics.auth_refusals.labels(exc.code, "sockjs").inc()
            headers = {}
            if exc.status == 401:
                headers["WWW-Authenticate"] = exc.www_authenticate()
            elif exc.status == 503:
                headers["Retry-After"] = "1"
            return self._cors(error_response(exc.status, exc.code, exc.message, headers))
        return self._cors(error_response(exc.status, exc.code, exc.message, exc.headers))

    def _session_headers(self, transport: str) -> dict[str, str]:
        headers = {"Cache-Control": NOT_CACHED}
        if self.cookie_needed:
            # For load balancers that stick on JSESSIONID (SockJS's cookie_needed): echoed if sent.
            headers["Set-Cookie"] = f"JSESSIONID={request.cookies.get('JSESSIONID') or 'dummy'}; path=/"
        return headers

    def _cors(self, response: Response) -> Response:
        """CORS as SockJS requires: the Origin echoed (``*`` without one, or for ``null``),
        credentials allowed, requested headers allowed. Only allowed origins get this far."""
        origin = request.headers.get("Origin")
        response.headers["Access-Control-Allow-Origin"] = origin if origin and origin != "null" else "*"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            response.headers["Access-Control-Allow-Headers"] = asked
        response.vary.add("Origin")
        return response


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text_of(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BrokenJson(str(exc)) from None


def _text(status: int, text: str) -> Response:
    return Response(
        text, status=status, content_type="text/plain; charset=UTF-8", headers={"Cache-Control": NOT_CACHED}
    )


def _not_found() -> Response:
    response = Response(status=404)
    del response.headers["Content-Type"]
    return response


def _method_not_allowed(allow: str) -> Response:
    response = Response(status=405, headers={"Allow": allow})
    del response.headers["Content-Type"]
    return response


def _cache_for_a_year(response: Response) -> None:
    response.headers["Cache-Control"] = f"public, max-age={ONE_YEAR}"
    response.headers["Expires"] = formatdate(time.time() + ONE_YEAR, usegmt=True)
