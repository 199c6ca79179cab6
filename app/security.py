"""Security headers on every response, and a strict Content-Security-Policy on pages.

The pages load scripts and styles only from /static (no inline script, no CDN), and
connect only back to this host (fetch, EventSource, WebSocket), so the policy can say
exactly that. Message text is inserted with textContent, never as HTML.
"""

from __future__ import annotations

from flask import Flask, Response, request


def content_security_policy(host: str) -> str:
    """The CSP for pages served to ``host`` (``Host`` header, port included)."""
    # 'self' covers ws:/wss: to the same host only in newer browsers; name them explicitly.
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' ws://{host} wss://{host}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def init_app(app: Flask) -> None:
    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.mimetype == "text/html":
            # Only documents send referrers; on API answers it would be bytes on every poll.
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("Content-Security-Policy", content_security_policy(request.host))
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response
