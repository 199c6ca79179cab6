"""The SockJS core's one error family: what a client sent that the protocol cannot take.

Each error carries the text SockJS 0.3.3 puts in the answer; the HTTP adapter
(``app/transports/sockjs_http.py``) turns every one of them into its status in one place
(the spec's 500 for a payload, 404 for a session that does not exist).
"""

from __future__ import annotations

__all__ = ["BrokenJson", "NoSuchSession", "PayloadExpected", "SockJSError"]


class SockJSError(Exception):
    """A request the SockJS protocol refuses.

    Attributes:
        text: the body of the answer, as sockjs-protocol-0.3.3.py checks it.
    """

    text = "SockJS protocol error."

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.text)
        self.detail = detail


class BrokenJson(SockJSError):
    """The payload of a send is not JSON (sockjs-protocol 0.3.3: 500 "Broken JSON encoding.")."""

    text = "Broken JSON encoding."


class PayloadExpected(SockJSError):
    """A send without a payload, or one that is not a list of strings (500 "Payload expected.")."""

    text = "Payload expected."


class NoSuchSession(SockJSError):
    """A send to a session this process does not hold (404: it never existed, timed out, or
    lives in another worker; see the README's "SockJS with several workers")."""

    text = "No such session."
