"""What the access-control tests need besides a server: keys, tokens, and small HTTP
servers of their own (a JWKS endpoint, a decision hook) that record what they were asked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

INVALID_TOKEN = 'Bearer realm="switchboard", error="invalid_token"'


# ------------------------------------------------------------------ keys and tokens


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_public_pem(key, path: Path) -> Path:
    path.write_bytes(public_pem(key))
    return path


def public_jwk(key, kid: str) -> dict:
    """The public half of ``key`` as a JWK with ``kid``, ``use`` and ``alg``."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk["alg"] = "RS256"
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk["alg"] = "ES256"
    return {**jwk, "kid": kid, "use": "sig"}


def claims(sub: str = "alice", ttl: float = 300, subscribe=("keys.*",), publish=("keys.*",), **extra) -> dict:
    """A token's claims: ``sub``, ``exp`` in ``ttl`` seconds, and the switchboard grants."""
    base = {
        "sub": sub,
        "exp": int(time.time() + ttl),
        "switchboard": {"subscribe": list(subscribe), "publish": list(publish)},
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, payload: dict) -> str:
    """``header.payload`` (base64url JSON), the part a signature covers."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"


def alg_none(payload: dict) -> str:
    """A token with ``alg: none`` and an empty signature."""
    return unsigned({"alg": "none", "typ": "JWT"}, payload) + "."


def hs256_with(secret: bytes, payload: dict, header: dict | None = None) -> str:
    """HS256 signed by hand, so any bytes can be the key (PyJWT refuses a PEM as an HMAC key:
    which is exactly the algorithm-confusion attack this is for)."""
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", **(header or {})}, payload)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


# ------------------------------------------------------------------ topic patterns


def reference_covers(pattern: str, topic: str, sub: str | None) -> bool:
    """What the module docstring says, as a matcher over strings: no regular expressions."""
    if pattern == "**":
        return True
    tokens: list = []
    segments = pattern.split(".")
    for index, segment in enumerate(segments):
        if segment in ("*", "**"):
            tokens.append(segment)
        else:
            if "{sub}" in segment and sub is None:
                return False
            tokens.append(("literal", segment.replace("{sub}", sub or "")))
        if index < len(segments) - 1:
            tokens.append(("literal", "."))

    def match(at: int, rest: str) -> bool:
        if at == len(tokens):
            return rest == ""
        token = tokens[at]
        if token == "**":  # one or more trailing segments: whatever is left, if anything
            return rest != ""
        if token == "*":  # one non-empty segment: no dot inside
            return any(match(at + 1, rest[end:]) for end in range(1, len(rest) + 1) if "." not in rest[:end])
        literal = token[1]
        return rest.startswith(literal) and match(at + 1, rest[len(literal) :])

    return match(0, topic)


# ------------------------------------------------------------------ a local HTTP server


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes
    time: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[Recorded], tuple[int, dict, bytes]]


class LocalServer:
    """An ``http.server`` on a free 127.0.0.1 port, in threads, that records every request.

    Args:
        respond: ``respond(request) -> (status, headers, body)``; may sleep (the slow hook),
            or return ``write(wfile)`` to write the raw response itself.
    """

    def __init__(self, respond: Responder):
        self.respond = respond
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Recorded(self.command, self.path, dict(self.headers), self.rfile.read(length))
                with owner._lock:
                    owner.requests.append(request)
                answer = owner.respond(request)
                if callable(answer):  # writes the raw response itself (a hook that drips bytes)
                    try:
                        answer(self.wfile)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                status, headers, body = answer
                try:
                    self.send_response(status)
                    for name, value in {"Content-Length": str(len(body)), **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the server under test gave up waiting (the slow hook): expected

            do_GET = do_POST = _serve

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "LocalServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()
