"""The signed session cookie (the guest's ``sid``), verified and signed once per value.

Flask's cookie session costs about a third of an HTTP publish: every request verifies the
cookie's HMAC and decodes its JSON, and, the session being permanent, signs it again and
formats a new ``Set-Cookie`` (``SESSION_REFRESH_EACH_REQUEST``). A publisher sends the
same cookie each time, so :class:`SessionCookies` keeps what it verified in a small LRU
keyed by the raw ``Cookie`` header, and the last signature it made (itsdangerous signs with
a whole-second timestamp, so within a second the signed value and the header are the same
bytes). What a request sees and what it is answered do not change:

* a cookie is only taken from the cache if it passed the full check before, and only while
  its signature is as young as Flask's check requires (``PERMANENT_SESSION_LIFETIME``);
  a tampered or re-signed cookie is another string, so it is checked in full;
* only sessions whose values are plain scalars are kept (each request gets its own copy);
* the ``Set-Cookie`` and ``Vary`` of a response are those Flask would write.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.http import dump_cookie

if TYPE_CHECKING:
    from flask import Flask, Request, Response
    from flask.sessions import SessionMixin

#: Verified cookie values kept: a worker's active browsers and publishers, give or take.
VERIFIED_COOKIES = 1024

_SCALARS = (str, int, float, bool, type(None))


def _frozen(data: dict) -> tuple | None:
    """``data`` as a hashable key (its order included: the JSON follows it), or None when a
    value is not a plain scalar (a mutable value must not be shared between requests)."""
    items = tuple(data.items())
    for key, value in items:
        if key.__class__ is not str or not isinstance(value, _SCALARS):
            return None
    return items


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the verification and the signing cached (see the
    module docstring).

    Args:
        size: most verified cookie values kept (least recently used go first).
    """

    def __init__(self, size: int = VERIFIED_COOKIES):
        self.size = size
        self._verified: OrderedDict[str, tuple[tuple, int]] = OrderedDict()
        self._serializer: tuple[tuple, URLSafeTimedSerializer] | None = None
        # (session items, cookie settings, second) -> the Set-Cookie header written then.
        self._last_cookie: tuple[tuple, str] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        """Flask's serializer, built again only when the keys change (it holds no state)."""
        if not app.secret_key:
            return None
        keys = (*(app.config["SECRET_KEY_FALLBACKS"] or ()), app.secret_key)
        cached = self._serializer
        if cached is not None and cached[0] == keys:
            return cached[1]
        serializer = super().get_signing_serializer(app)
        assert serializer is not None
        self._serializer = (keys, serializer)
        self._verified.clear()  # another key: what it verified proves nothing now
        self._last_cookie = None
        return serializer

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        # Keyed by the whole Cookie header: it determines the cookie's value, and a hit
        # then costs no cookie parsing either.
        header = request.environ.get("HTTP_COOKIE")
        if not header:
            return self.session_class()
        max_age = int(app.permanent_session_lifetime.total_seconds())
        known = self._verified.get(header)
        if known is not None:
            items, signed_at = known
            age = int(time.time()) - signed_at  # as itsdangerous's TimestampSigner.unsign
            if 0 <= age <= max_age:
                self._verified.move_to_end(header)
                return self.session_class(items)
            del self._verified[header]
        value = request.cookies.get(self.get_cookie_name(app))
        if not value:
            return self.session_class()
        try:
            data, signed = serializer.loads(value, max_age=max_age, return_timestamp=True)
        except BadSignature:
            return self.session_class()
        if isinstance(data, dict):
            items = _frozen(data)
            if items is not None:
                self._verified[header] = (items, int(signed.timestamp()))
                if len(self._verified) > self.size:
                    self._verified.popitem(last=False)
        return self.session_class(data)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not session or not self.should_set_cookie(app, session):
            # Nothing to (re)write: Flask's own code (a Vary, or the deletion of an emptied cookie).
            super().save_session(app, session, response)
            return
        settings = (
            self.get_cookie_name(app),
            self.get_cookie_domain(app),
            self.get_cookie_path(app),
            self.get_cookie_secure(app),
            self.get_cookie_partitioned(app),
            self.get_cookie_samesite(app),
            self.get_cookie_httponly(app),
        )
        expires = self.get_expiration_time(app, session)
        items = _frozen(dict(session))
        # The header depends on the items, the settings, and the second it is written in
        # (the signature's timestamp and Expires are whole seconds).
        key = None if items is None else (items, settings, int(time.time()), expires and int(expires.timestamp()))
        last = self._last_cookie
        if key is not None and last is not None and last[0] == key:
            header = last[1]
        else:
            name, domain, path, secure, partitioned, samesite, httponly = settings
            value = self.get_signing_serializer(app).dumps(dict(session))  # type: ignore[union-attr]
            header = dump_cookie(
                name,
                value=value,
                expires=expires,
                path=path,
                domain=domain,
                secure=secure,
                httponly=httponly,
                max_size=response.max_cookie_size,
                samesite=samesite,
                partitioned=partitioned,
            )
            if key is not None:
                self._last_cookie = (key, header)
        if session.accessed:  # Flask's order of the two headers
            response.vary.add("Cookie")
            response.headers.add("Set-Cookie", header)
        else:
            response.headers.add("Set-Cookie", header)
            response.vary.add("Cookie")
