"""How one setting's text becomes its value: each parser returns the value or raises ValueError.

:mod:`app.config` names the variables and their defaults; a parser's ValueError becomes a
ConfigError there that names the variable. Parsers with bounds (``integer(1, 10)``) are
made by a function that returns the parser.
"""

from __future__ import annotations

import re
from typing import Callable

_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._-]+$")


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def seconds(minimum: float, maximum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if value != value or value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be a number of seconds {bound}")
        return value

    return parse


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ValueError(f"{origin!r} is not an origin like https://example.com[:port]")
    return origins


def redis_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return text


def optional_bool(text: str) -> bool | None:
    return None if not text.strip() else boolean(text)


def host_ports(text: str) -> tuple[tuple[str, int], ...]:
    found = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def optional_name(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return text


def routing(text: str) -> str:
    if text not in ("topic", "shared"):
        raise ValueError("must be topic or shared")
    return text


def key_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", text):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return text


def prefix(text: str) -> str:
    if not _PREFIX_RE.match(text):
        raise ValueError("must look like /app (a slash and one path segment)")
    return text


def optional_text(text: str) -> str | None:
    return text or None


def secret(text: str) -> str:
    if len(text) < 16:
        raise ValueError("must be at least 16 characters")
    return text


def auth_secret(text: str) -> str:
    # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits).
    if len(text.encode("utf-8")) < 32:
        raise ValueError("must be at least 32 bytes (RFC 7518: an HS256 key is at least 256 bits)")
    return text


def pem_file(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    try:
        with open(text, "rb") as handle:
            pem = handle.read(1024 * 1024)
    except OSError as exc:
        raise ValueError(f"cannot read the key file: {exc.strerror}") from None
    if not pem.startswith(b"-----BEGIN "):
        raise ValueError("is not a PEM file (it must start with -----BEGIN PUBLIC KEY-----)")
    # Checked here, at start, so a wrong key stops the master with this message instead of
    # every worker failing to boot with a traceback.
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not a PEM public key ({exc}); give the public half, never the private key") from None
    is_p256 = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    if not (isinstance(key, rsa.RSAPublicKey) or is_p256):
        raise ValueError("must be an RSA key (RS256) or an EC P-256 key (ES256)")
    return text


def http_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", text):
        raise ValueError("must be an http:// or https:// URL")
    return text


def topic_patterns(text: str) -> tuple[str, ...]:
    from .auth.patterns import check_pattern  # the one definition of the pattern syntax

    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    for pattern in patterns:
        check_pattern(pattern)
    return patterns


def demo_users(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            raise ValueError(f"{name!r} is not a demo user name (a-z, 0-9, _ and -, up to 32)")
    return names


def log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def heart_beat(text: str) -> tuple[int, int]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError("must be milliseconds, one number or two (send,receive) like 10000,10000")
    send, receive = (int(part) for part in parts)
    if send > 3_600_000 or receive > 3_600_000:
        raise ValueError("must be at most 3600000 ms")
    return send, receive
