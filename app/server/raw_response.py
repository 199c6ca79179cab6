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

Or, for an answer that is not known yet (a parked long poll), :meth:`RawResponse.defer`:
no byte is sent until the application answers, and nothing waits meanwhile
(:mod:`app.server.deferred`).
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

    def defer(self, on_parked):
        """Answer this request later, after its greenlet has ended (a parked long poll).

        The application then returns a ``204`` response as a placeholder: its headers
        (with what the framework's hooks add) are kept for the real answer, and nothing is
        sent. Once the request's greenlet is done with it, the server calls
        ``on_parked(deferred)``; the application answers with ``deferred.answer(status,
        body, content_type, headers)`` from a greenlet of its own, which then serves the
        connection's next requests. If the application returns anything but a 204 (an
        error after all), ``on_parked`` is never called and the response goes out as usual.

        Returns:
            The ``Deferred`` (:mod:`app.server.deferred`), or ``None`` when this server
            cannot (a plain gevent ``WSGIServer``): the application then answers as usual.
        """
        return self._handler.defer(on_parked)

    def written(self, count: int) -> None:
        """Count ``count`` body bytes the application wrote itself (the access log's size)."""
        self._handler.response_length += count
