"""One STOMP connection's state machine, sans-I/O (STOMP 1.0, 1.1 and 1.2).

:class:`StompSession` never touches a socket, a clock or the event hub. The I/O
layer (``app/transports/stomp_ws.py``) drives it like this::

    session = StompSession(StompConfig(...), now=clock())
    # for every WebSocket message received:
    session.receive_data(message_bytes, now=clock())
    # whenever the session's deadline passes (see next_deadline()):
    session.tick(now=clock())
    # after each of the calls above, and after deliver():
    while True:
        requests = session.requests()     # Connect, Subscribe, Send, Commit, Ack, Closed, ...
        for request in requests:
            ...                           # act on the hub; on a refusal: session.send_error(...)
        if requests:
            session.confirm(now=clock())  # done: RECEIPTs go out, waiting frames go on
        chunks = session.data_to_send()   # one frame or one heart-beat each
        ...                               # one WebSocket message per chunk
        if not requests and not chunks:
            break
    if session.closed:
        ...                               # close the WebSocket
    # when the hub has an event for subscription ``sub_id``:
    if session.can_deliver(sub_id):
        session.deliver(sub_id, body, {"event-id": ..., "content-type": ...}, now=clock())
    # when the socket goes away without a DISCONNECT:
    session.connection_lost()

A frame that makes requests waits for the broker: its RECEIPT, and every frame the
client sent after it, wait until :meth:`StompSession.confirm`. A broker that refuses it
calls :meth:`StompSession.send_error`; then the ERROR is the last thing the client gets,
and nothing sent after the refused frame is looked at (STOMP 1.2, "ERROR").

Which client command is allowed in which state is the table :data:`_HANDLERS`;
every failure is a :class:`~app.stomp.errors.StompError`, answered in one place
(:meth:`StompSession._fail`) with an ERROR frame, after which the session is
closed. What each command does is the job of the package's other modules (see
:mod:`app.stomp`); this one keeps the state and the order of things.
"""

from __future__ import annotations

import enum
import functools
import secrets
from collections.abc import Callable, Iterable, Mapping

from .access import Authenticator, Authorizer, SessionAccess, from_login_hook
from .config import StompConfig
from .errors import BrokerError, StompError, require_header, unexpected_command
from .frames import EOL, Frame, escapes_headers, serialize
from .messages import BLOB_TYPE, MessageWriter, encode_message_tail, message_head
from .negotiation import HeartBeats, agree_heart_beat, connected_frame, negotiate_version, parse_heart_beat
from .parser import FrameParser
from .requests import Ack, Closed, Connect, Nack, PendingRequests, Request, Send
from .subscriptions import OpenSubscriptions
from .transactions import Transactions

# encode_message_tail: for the callers that build a MESSAGE tail for StompSession.deliver.
__all__ = ["SessionState", "StompSession", "encode_message_tail"]


class SessionState(enum.Enum):
    """Where a session is in its life (see :data:`_HANDLERS`)."""

    AWAITING_CONNECT = "awaiting-connect"
    CONNECTED = "connected"
    CLOSED = "closed"


class StompSession:
    """The server side of one STOMP connection, fed bytes and the time.

    Inputs: :meth:`receive_data`, :meth:`confirm`, :meth:`tick`, :meth:`deliver`,
    :meth:`send_error`, :meth:`connection_lost`. Outputs: :meth:`data_to_send`
    (bytes for the client) and :meth:`requests` (work for the broker). Time is
    always passed in, in seconds, from any monotonic clock.

    Versions: a 1.0 session neither escapes nor unescapes headers, has no
    heart-beats, no NACK, and identifies a subscription without ``id`` by its
    destination; ACK uses ``message-id`` (1.0), ``message-id`` + ``subscription``
    (1.1) or ``id``, the MESSAGE's ``ack`` header (1.2).

    A body on a frame that must not have one (anything but SEND) is ignored.
    The session is not thread-safe; under gevent each call runs without
    yielding, so a reader greenlet and a hub greenlet may share it.

    Attributes:
        config: the :class:`StompConfig`.
        session_id: the id sent in CONNECTED's ``session`` header and used as
            the prefix of every ``message-id``.
        error: the :class:`StompError` that closed the session, or ``None``.
        close_reason: why the session closed, or ``None`` while open.
    """

    def __init__(
        self,
        config: StompConfig | None = None,
        *,
        now: float | None = None,
        session_id: str | None = None,
        authenticate: Authenticator | None = None,
        authorize: Authorizer | None = None,
    ) -> None:
        """Create a session waiting for CONNECT.

        Args:
            config: the settings; ``StompConfig()`` when omitted.
            now: the time the connection opened, which starts
                ``connect_timeout``; when omitted, the first :meth:`receive_data`
                or :meth:`tick` starts it.
            session_id: the session id; a random one when omitted.
            authenticate: this connection's CONNECT check (:mod:`.access`), in place of
                ``config.authenticate``; it may name a principal and an expiry.
            authorize: this connection's check of each SUBSCRIBE and SEND destination.
        """
        self.config = config if config is not None else StompConfig()
        self._access = SessionAccess(
            authenticate or from_login_hook(self.config.authenticate), authorize, self.config.validate_destination
        )
        self.session_id = session_id if session_id is not None else secrets.token_hex(8)
        self.error: StompError | None = None
        self.close_reason: str | None = None
        self._parser = FrameParser(self.config.limits)
        self._state = SessionState.AWAITING_CONNECT
        self._version: str | None = None
        self._heart_beat = (0, 0)
        self._outgoing: list[bytes] = []
        self._requests = PendingRequests()  # and the frame that waits for confirm()
        self._subscriptions = OpenSubscriptions(self.config)
        self._acks = self._subscriptions.acks
        self._transactions = Transactions(self.config.max_transactions, self.config.max_transaction_frames)
        self._messages = MessageWriter(self.session_id, self._acks)
        self._time = HeartBeats(now)  # connect timeout, client silence, server heart-beats

    # --- state ------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current :class:`SessionState`."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the session is over; close the connection once its data is sent."""
        return self._state is SessionState.CLOSED

    @property
    def principal(self) -> object:
        """Who the authenticator said the client is (its ``Login.principal``), once connected."""
        return self._access.principal

    @property
    def version(self) -> str | None:
        """The negotiated STOMP version, or ``None`` before CONNECT."""
        return self._version

    @property
    def escapes_messages(self) -> bool:
        """Whether this session's MESSAGE headers are escaped (1.1, 1.2; not 1.0): the
        ``escaped`` argument of :func:`encode_message_tail` for its deliveries."""
        return escapes_headers("MESSAGE", self._version)

    @property
    def heart_beat(self) -> tuple[int, int]:
        """Negotiated ``(client_to_server_ms, server_to_client_ms)``; 0 = none."""
        return self._heart_beat

    @property
    def waiting(self) -> bool:
        """Whether a frame waits for the broker's :meth:`confirm`."""
        return self._requests.waiting

    # --- outputs ----------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Return and forget the bytes queued for the client.

        Returns:
            One chunk per frame or heart-beat, in order. Send each as one
            WebSocket message (text if it is valid UTF-8, else binary). After
            the last chunk, if :attr:`closed`, close the connection.
        """
        chunks, self._outgoing = self._outgoing, []
        return chunks

    def requests(self) -> list[Request]:
        """Return and forget the requests for the broker produced so far.

        Returns:
            :class:`Connect`, :class:`Subscribe`, :class:`Unsubscribe`,
            :class:`Send`, :class:`Commit`, :class:`Ack`, :class:`Nack` and finally
            :class:`Closed`, in the order the client's frames caused them. Act on them,
            then call :meth:`confirm` (or :meth:`send_error` to refuse one).
        """
        return self._requests.take()

    # --- inputs -----------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Process bytes received from the client.

        Any bytes, even part of a frame, count as a sign of life for heart-beating.
        Frames are handled in order until one makes requests of the broker: the frames
        after it wait (buffered) for :meth:`confirm`. A protocol error queues an ERROR
        frame and closes the session, and the rest of ``data`` is ignored. Data received
        after the session closed is ignored.

        Args:
            data: one WebSocket message's payload as bytes (a text message's
                ``str`` encoded back to UTF-8), in any chunking of the stream.
            now: the current time in seconds.
        """
        if self.closed:
            return
        self._time.advance(now)
        if data:
            self._time.last_received = now
        try:
            self._parser.feed(data)
        except StompError as err:
            self._fail(err)
            return
        self._process()

    def confirm(self, now: float | None = None) -> None:
        """Tell the session that the broker has acted on every request handed out.

        Call it after the requests of :meth:`requests` were carried out (unless one was
        refused with :meth:`send_error`, which closes the session). The frame that made
        them is then done: its RECEIPT is queued, a COMMIT's acknowledgments take effect
        here (a NACKed topic message is sent again), and the frames the client sent after
        it are processed, which may make new requests. Does nothing when nothing waits.

        Args:
            now: the current time in seconds, if known.
        """
        if now is not None:
            self._time.advance(now)
        held = self._requests.release()
        if self.closed or held is None:
            return
        receipt, after = held
        for action in after:
            action()
        if receipt is not None:
            self._send_frame(Frame("RECEIPT", (("receipt-id", receipt),)))
        self._process()

    def _process(self) -> None:
        # Handle buffered frames until one waits for the broker, the buffer is empty, or
        # the session ends.
        frame: Frame | None = None
        try:
            while not self.closed and not self._requests.waiting:
                item = self._parser.next_item()
                if item is None:
                    break
                if isinstance(item, Frame):  # a HEARTBEAT needs nothing beyond last_received
                    frame = item
                    self._handle_frame(item)
                    frame = None
        except StompError as err:
            if frame is not None and err.receipt_id is None:
                err.receipt_id = frame.get("receipt")
            self._fail(err)

    def tick(self, now: float) -> None:
        """Do the time-driven work due at ``now``.

        Queues a heart-beat EOL when the server has been silent for the
        negotiated interval, and closes the session (ERROR frame, then
        :class:`Closed`) when the client has sent nothing for its interval
        times ``heartbeat_margin``, or has not sent CONNECT within
        ``connect_timeout``. Call it at :meth:`next_deadline`; calling it more
        often is harmless.

        Args:
            now: the current time in seconds.
        """
        if self.closed:
            return
        self._time.advance(now)
        connecting = self._state is SessionState.AWAITING_CONNECT
        # Expired credentials first (a login has none before CONNECT), then the timeouts.
        error = self._access.expired(now) or self._time.overdue(
            now, connecting, self.config.connect_timeout, self._heart_beat[0]
        )
        if error is not None:
            self._fail(error)
        elif not connecting and self._time.beat_due(now):
            # STOMP 1.2: "if the sender has no real STOMP frame to send, it MUST send an EOL".
            self._outgoing.append(EOL)

    def next_deadline(self) -> float | None:
        """Tell when :meth:`tick` must next be called.

        Returns:
            The earliest time, in seconds, at which a heart-beat is due or a
            timeout expires; ``None`` when nothing is scheduled (closed, no
            heart-beats negotiated, or the start time is not known yet).
        """
        if self.closed:
            return None
        if self._state is SessionState.AWAITING_CONNECT:
            return self._time.connect_deadline(self.config.connect_timeout)
        expires_at = self._access.expires_at
        deadlines = [] if expires_at is None else [expires_at]
        deadlines += self._time.deadlines()
        return min(deadlines) if deadlines else None

    def can_deliver(self, sub_id: str) -> bool:
        """Tell whether subscription ``sub_id`` can take another MESSAGE now.

        Args:
            sub_id: the subscription id of a :class:`Subscribe` request.

        Returns:
            ``False`` when the session is not connected, the subscription does not
            exist (any more), or its ack mode is ``client``/``client-individual``
            and its prefetch window (``prefetch-count``, at most ``max_unacked``)
            is full of unacknowledged messages. Wait for an :class:`Ack` (or
            :class:`Nack`) request for that subscription, then ask again.
        """
        return self._state is SessionState.CONNECTED and self._subscriptions.ready(sub_id) is not None

    def room(self, sub_id: str, most: int) -> int:
        """How many MESSAGEs subscription ``sub_id`` can take now, at most ``most``.

        ``most`` in ``auto`` mode; in client modes what its prefetch window has left;
        0 whenever :meth:`can_deliver` would say ``False``.
        """
        sub = self._subscriptions.by_id.get(sub_id) if self._state is SessionState.CONNECTED else None
        if sub is None:
            return 0
        # Asked once per delivery round: the auto case answers without a call more.
        return most if sub.ack_mode == "auto" else self._subscriptions.room(sub_id, most)

    def direct_messages(self, sub_id: str, count: int, now: float) -> tuple[bytes, bytes, int] | None:
        """Number ``count`` MESSAGEs of ``auto`` subscription ``sub_id`` that the caller writes
        itself, not queued: a fan-out writes one event to many sessions, and queueing and taking
        each session's copy cost more than writing it.

        The caller writes MESSAGE ``k`` (0 to ``count - 1``) as ``head[0] + b"%d" % (first + k)
        + head[1] + tail``, ``tail`` being :func:`encode_message_tail`'s for this session
        (:attr:`escapes_messages`; ``default_type`` as it chooses): the bytes :meth:`deliver`
        with that ``tail`` queues. It must send them before anything this session queues next.

        Returns:
            ``(head[0], head[1], first)``; ``None`` when the MESSAGEs must go through
            :meth:`deliver`: the session is not connected, the subscription is gone or in a
            client ack mode (its MESSAGEs are kept), or frames already queued must leave first.
        """
        if self._outgoing or self._state is not SessionState.CONNECTED:
            return None
        sub = self._subscriptions.by_id.get(sub_id)
        if sub is None or sub.ack_mode != "auto":
            return None
        head = sub.message_head or message_head(sub, self.session_id, escapes_headers("MESSAGE", self._version))
        self._time.wrote(now)
        return head[0], head[1], self._messages.reserve(count)

    def deliver(
        self,
        sub_id: str,
        body: bytes,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        now: float | None = None,
        tail: bytes | None = None,
        redelivered: bool = False,
        default_type: str | None = BLOB_TYPE,
        destination: str | None = None,
    ) -> str | None:
        """Queue a MESSAGE frame for subscription ``sub_id`` (its headers, in order, are
        described in :mod:`app.stomp.messages`, which writes every MESSAGE). With a client
        ack mode the message is kept until ACKed.

        Args:
            sub_id: the subscription id of a :class:`Subscribe` request.
            body: the message body octets.
            headers: extra MESSAGE headers, as a mapping or ``(name, value)`` pairs.
            now: the current time in seconds; when given, the server heart-beat
                timer restarts from it (the frame is a sign of life).
            tail, redelivered, default_type, destination: how the MESSAGE is written, as
                :meth:`~app.stomp.messages.MessageWriter.write` describes (``tail``: the
                event's part built once, by :func:`encode_message_tail`, for many sessions).

        Returns:
            The new ``message-id``; or ``None`` when nothing was queued because
            the session is not connected, the subscription is gone, or
            :meth:`can_deliver` is false (keep or drop the event; do not retry
            in a loop).
        """
        if now is not None:
            self._time.advance(now)
        sub = self._subscriptions.ready(sub_id) if self._state is SessionState.CONNECTED else None
        if sub is None:
            return None
        message_id, data = self._messages.write(
            sub,
            body,
            headers,
            self._version,
            tail=tail,
            redelivered=redelivered,
            default_type=default_type,
            destination=destination,
        )
        self._send_bytes(data)
        return message_id

    def send_error(self, message: str, body: str = "", *, receipt_id: str | None = None) -> None:
        """End the session from the server side: queue an ERROR frame, then close.

        For broker-side failures (unknown destination, hub refused a publish,
        server shutting down with a reconnect hint). Does nothing once closed. A frame
        waiting for :meth:`confirm` is then never confirmed: nothing of it happens, and
        nothing after it.

        Args:
            message: one line for the ERROR ``message`` header.
            body: an explanation for the ERROR body.
            receipt_id: the ``receipt`` of the client frame concerned, if any.
        """
        if not self.closed:
            self._fail(BrokerError(message, body, receipt_id=receipt_id))

    def connection_lost(self, reason: str = "connection lost") -> None:
        """Record that the connection closed without DISCONNECT.

        Open transactions are aborted (STOMP 1.2, "BEGIN": "implicitly aborted
        ... if the TCP connection fails for any reason") and a :class:`Closed`
        request is queued. Does nothing once closed.

        Args:
            reason: the reason given in :class:`Closed`.
        """
        if not self.closed:
            self._close(reason, None)

    # --- frame handling -----------------------------------------------------------

    def _handle_frame(self, frame: Frame) -> None:
        handler = _HANDLERS[self._state].get(frame.command)
        if handler is None or frame.command in _NOT_IN_VERSION.get(self._version, ()):
            raise unexpected_command(frame.command, self._state is SessionState.AWAITING_CONNECT, self._version)
        made = len(self._requests)
        handler(self, frame)
        if self.closed:
            return
        # STOMP 1.2, "Header receipt": any client frame other than CONNECT MAY ask
        # for one; DISCONNECT answers its own before closing.
        receipt = None if frame.command in ("CONNECT", "STOMP") else frame.get("receipt")
        if len(self._requests) > made:
            # The broker acts first; the RECEIPT (and every later frame) waits for confirm().
            self._requests.hold(receipt)
        elif receipt is not None:
            self._send_frame(Frame("RECEIPT", (("receipt-id", receipt),)))

    def _on_connect(self, frame: Frame) -> None:
        version = negotiate_version(frame.get("accept-version"), self.config.versions)
        # STOMP 1.0 has no heart-beating; 1.1 introduced the header.
        client_beats = (0, 0) if version == "1.0" else parse_heart_beat(frame.get("heart-beat"))
        self._access.login(frame, self._time.clock)
        server_beats = (0, 0) if version == "1.0" else self.config.heart_beat
        self._heart_beat = agree_heart_beat(client_beats, server_beats)
        self._time.start(self._heart_beat, self.config.heartbeat_margin)
        self._version = version
        self._parser.version = version  # the frames that follow use its escaping rules
        self._state = SessionState.CONNECTED
        self._send_frame(connected_frame(version, server_beats, self.session_id, self.config.server_name))
        self._requests.append(
            Connect(version, frame.get("login"), frame.get("host"), self.session_id, self._heart_beat, self.principal)
        )

    def _on_send(self, frame: Frame) -> None:
        destination = require_header(frame, "destination")
        self._access.check("publish", destination)
        transaction = frame.get("transaction")
        if transaction is not None:
            self._transactions.hold(transaction, frame)  # checked now, published at COMMIT
        else:
            self._requests.append(self._send_request(frame, None))

    def _send_request(self, frame: Frame, transaction: str | None) -> Send:
        return Send(
            require_header(frame, "destination"), frame.body, frame.get("content-type"), frame.headers, transaction
        )

    def _on_subscribe(self, frame: Frame) -> None:
        check = functools.partial(self._access.check, "subscribe")
        self._requests.append(self._subscriptions.open(frame, self._version, check))

    def _on_unsubscribe(self, frame: Frame) -> None:
        for request in self._subscriptions.close(frame, self._version):
            self._requests.append(request)

    def _on_ack(self, frame: Frame) -> None:
        sub, message_id = self._acks.resolve(frame, self._version, self._subscriptions.by_id)
        transaction = frame.get("transaction")
        if transaction is not None:
            self._transactions.hold(transaction, frame)  # checked now, applied at COMMIT
        else:
            self._requests.append(self._acks.request(sub, message_id, frame.command == "NACK", self._resend))

    def _resend(self, frames: tuple[Frame, ...]) -> None:
        for frame in frames:
            self._send_frame(frame)

    def _resend_on_confirm(self, frames: tuple[Frame, ...]) -> None:
        self._requests.on_confirm(lambda: self._resend(frames))

    def _on_begin(self, frame: Frame) -> None:
        self._transactions.begin(require_header(frame, "transaction"))

    def _on_commit(self, frame: Frame) -> None:
        transaction = require_header(frame, "transaction")
        send = functools.partial(self._send_request, transaction=transaction)
        self._requests.append(self._transactions.commit(transaction, frame.get("receipt"), send, self._settle_held))

    def _settle_held(self, held: Frame) -> Ack | Nack | None:
        # An ACK/NACK was valid when received, but may have been settled since. Settled here
        # at once (the broker's refusal closes the session anyway), but a NACKed topic
        # message is sent again only once the COMMIT is confirmed.
        pending = self._acks.still_pending(held, self._version, self._subscriptions.by_id)
        if pending is None:
            return None
        sub, message_id = pending
        return self._acks.request(sub, message_id, held.command == "NACK", self._resend_on_confirm)

    def _on_abort(self, frame: Frame) -> None:
        self._transactions.end(require_header(frame, "transaction"))

    def _on_disconnect(self, frame: Frame) -> None:
        receipt = frame.get("receipt")
        if receipt is not None:
            # STOMP 1.2, "DISCONNECT": the client waits for this RECEIPT, then closes.
            self._send_frame(Frame("RECEIPT", (("receipt-id", receipt),)))
        self._close("client disconnected", None)

    # --- the one way out ----------------------------------------------------------

    def _fail(self, error: StompError) -> None:
        # Every failure ends here: ERROR frame, then close (STOMP 1.2, "ERROR").
        self.error = error
        self._send_frame(error.to_frame())
        self._close(error.message, error.kind)

    def _close(self, reason: str, error_kind: str | None) -> None:
        # Open transactions are implicitly aborted (STOMP 1.2, "BEGIN"), and a frame that
        # waited for the broker never happens.
        self._state = SessionState.CLOSED
        self.close_reason = reason
        self._requests.drop()
        self._transactions.abort_all()
        self._subscriptions.clear()
        self._requests.append(Closed(reason, error_kind))

    def _send_frame(self, frame: Frame) -> None:
        self._send_bytes(serialize(frame, self._version))

    def _send_bytes(self, data: bytes) -> None:
        self._outgoing.append(data)
        self._time.sent()


# Which client commands each state accepts, and who handles them. A command
# missing from a state's row is refused with an ERROR (see errors.unexpected_command).
_HANDLERS: dict[SessionState, dict[str, Callable[[StompSession, Frame], None]]] = {
    SessionState.AWAITING_CONNECT: {
        "CONNECT": StompSession._on_connect,
        # STOMP 1.2: "servers MUST handle a STOMP frame in the same manner as a CONNECT frame".
        "STOMP": StompSession._on_connect,
    },
    SessionState.CONNECTED: {
        "SEND": StompSession._on_send,
        "SUBSCRIBE": StompSession._on_subscribe,
        "UNSUBSCRIBE": StompSession._on_unsubscribe,
        "ACK": StompSession._on_ack,
        "NACK": StompSession._on_ack,
        "BEGIN": StompSession._on_begin,
        "COMMIT": StompSession._on_commit,
        "ABORT": StompSession._on_abort,
        "DISCONNECT": StompSession._on_disconnect,
    },
    SessionState.CLOSED: {},
}

# Client commands a negotiated version lacks: NACK arrived with STOMP 1.1.
_NOT_IN_VERSION: dict[str | None, frozenset[str]] = {"1.0": frozenset({"NACK"})}
