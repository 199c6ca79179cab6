"""gunicorn's access log without credentials: ``logger_class`` in gunicorn.conf.py.

A token or a ticket in a log file outlives its request: logs are shipped, kept and read
by people who must not be able to replay them. Switchboard refuses tokens in URLs (400)
and tickets are single-use, but the refused or spent request is still logged, so the
values are taken out here, where every access-log line is built.

Server-side on purpose: gunicorn imports this module by name in its master and workers,
so it imports only gunicorn and the standard library, nothing from the app (``import
app`` is light). The parameter names below are the app's (``app.auth.access``:
``URL_TOKEN_PARAMS`` and ``ticket``); tests/unit/test_access_log.py checks they agree.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from gunicorn.glogging import Logger

__all__ = ["REDACTED", "SECRET_PARAMS", "RedactingLogger", "redact_query", "redact_uri"]

REDACTED = "[redacted]"
# Query parameters whose value is a credential (compared decoded and case-insensitively,
# so ?TOKEN= and ?%74oken= are redacted as well).
SECRET_PARAMS = frozenset({"token", "access_token", "ticket"})
# Atoms whose whole value is a credential (request/response headers, their environ form).
_SECRET_ATOMS = ("{authorization}i", "{cookie}i", "{set-cookie}o", "{http_authorization}e", "{http_cookie}e")
# Atoms that hold a query string or a URI with one.
_URI_ATOMS = ("f", "{referer}i", "{http_referer}e", "{raw_uri}e", "{request_uri}e")
_QUERY_ATOMS = ("q", "{query_string}e")


def redact_query(query: str) -> str:
    """``query`` with the value of every credential parameter replaced by ``[redacted]``.

    The rest is kept byte for byte (names, order, other values, separators).
    """
    if not query:
        return query
    parts = query.split("&")
    for index, part in enumerate(parts):
        name, eq, _value = part.partition("=")
        if unquote_plus(name).strip().lower() in SECRET_PARAMS:
            parts[index] = f"{name}={REDACTED}" if eq else name
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """``uri`` (a path or an absolute URL) with its query's credentials redacted."""
    if not uri or "?" not in uri:
        return uri
    path, _, query = uri.partition("?")
    query, hash_, fragment = query.partition("#")
    return f"{path}?{redact_query(query)}{hash_}{fragment}"


def _redact_request_line(line: str) -> str:
    # "GET /path?query HTTP/1.1": the URI is the middle word (it cannot hold a space).
    method, space, rest = line.partition(" ")
    uri, space2, protocol = rest.rpartition(" ") if rest.count(" ") else (rest, "", "")
    return f"{method}{space}{redact_uri(uri)}{space2}{protocol}"


class RedactingLogger(Logger):
    """gunicorn's logger whose access-log atoms never carry a token, ticket or cookie.

    ``r`` (request line), ``q`` (query), ``f`` (Referer) and their header and environ
    forms have the values of ``token``, ``access_token`` and ``ticket`` replaced;
    ``Authorization``, ``Cookie`` and ``Set-Cookie`` are replaced whole (keeping the
    scheme of ``Authorization``), whatever ``access_log_format`` asks for.
    """

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["r"] = _redact_request_line(atoms["r"])
        for key in _QUERY_ATOMS:
            if atoms.get(key):
                atoms[key] = redact_query(atoms[key])
        for key in _URI_ATOMS:
            if atoms.get(key):
                atoms[key] = redact_uri(atoms[key])
        for key in _SECRET_ATOMS:
            value = atoms.get(key)
            if value:
                scheme = value.split(" ", 1)[0] if "authorization" in key and " " in value else ""
                atoms[key] = f"{scheme} {REDACTED}" if scheme else REDACTED
        return atoms
