"""The socket under a streaming HTTP response, handed to the application explicitly.

A stream that writes its own bytes after the headers (an SSE stream on the delivery layer,
:mod:`app.delivery`) needs the connection's socket and the framing the server chose for
the body. The handler puts a :class:`RawResponse` in every request's environ under
:data:`ENVIRON_RAW_RESPONSE`; nothing else of the server's is exposed.

Contract: the application first sends the status, the headers and at least one body
chunk through WSGI (so the server has committed to its framing), then writes body bytes
itself, framed as :attr:`RawResponse.chunked` says, and returns from its iterable only
after its own writes are complete; the server then ends the body (``0`` chunk) as usual.

Or, to let its request's greenlet end while the stream lives on (an idle stream then costs
no greenlet, nor its parked stack): it calls :meth:`RawResponse.detach` once the headers are
out, returns from its iterable, and calls ``finish()`` on what ``detach`` gave when its own
writes are done; the server then ends the body, closes the connection and logs the request.
"""

from __future__ import annotations

ENVIRON_RAW_RESPONSE = "switchboard.raw_response"


class RawResponse:
    """One request's response socket, for the application's own writes.

    Args:
        handler: gevent's ``WSGIHandler`` serving the request.
    """

    __slots__ = ("_handler",)

    def __init__(self, handler):
        self._handler = handler

    @property
    def socket(self):
        """The connection's gevent socket."""
        return self._handler.socket

    @property
    def started(self) -> bool:
        """Whether the status line and the headers are out."""
        return bool(self._handler.headers_sent)

    @property
    def chunked(self) -> bool:
        """Whether the body is in HTTP/1.1 chunked framing (else it is raw, and the
        connection closes after it: an HTTP/1.0 client)."""
        return bool(self._handler.response_use_chunked)

    def detach(self):
        """Keep the connection open after the application's iterable ends.

        Returns:
            A ``Detached`` (:mod:`app.server.handler`): its ``finish()`` ends the body,
            closes the connection and writes the access log line; a graceful stop waits
            for it (and cuts the connection if it does not come).
        """
        return self._handler.detach()

    def written(self, count: int) -> None:
        """Count ``count`` body bytes the application wrote itself (the access log's size)."""
        self._handler.response_length += count
