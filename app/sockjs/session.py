"""One SockJS session's state machine: no sockets, no clock, no greenlets.

The caller feeds it what happened and asks it what to write:

* a receiving request arrives: :meth:`SockJSSession.attach` (the answer says whether it
  may receive, or must be answered at once with a close frame: ``2010`` when another
  receiver holds the session, the session's own close frame once it has ended);
* it may write: :meth:`SockJSSession.frames` (the open frame first, then every queued
  message as one ``a`` frame, heartbeats, the close frame);
* it ends: :meth:`SockJSSession.detach` (normally: a poll answered, a stream at its size
  limit, and the disconnect delay starts; or interrupted: the client went away while
  receiving, and the session closes with 1002);
* the application sends (:meth:`send`) and closes (:meth:`close`); the client's messages
  wait in :meth:`messages_received`;
* time passes: :meth:`tick` at :meth:`next_deadline` (heartbeats, the disconnect delay).

States (:class:`State`) and what moves between them are the table :data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from .framing import HEARTBEAT_FRAME, OPEN_FRAME, close_frame, message_frame

__all__ = [
    "ANOTHER_CONNECTION",
    "Attach",
    "GO_AWAY",
    "INTERRUPTED",
    "SessionConfig",
    "SockJSSession",
    "State",
    "TRANSITIONS",
]

#: sockjs-protocol 0.3.3: a second receiver on a session gets this close frame (and the
#: session stays as it was).
ANOTHER_CONNECTION = (2010, "Another connection still open")
#: The close a receiver's network error causes ("Handling close": 1002 or a fresh session).
INTERRUPTED = (1002, "Connection interrupted")
#: What the test suite's ``close`` service sends, and our default application close.
GO_AWAY = (3000, "Go away!")


@dataclass(frozen=True)
class SessionConfig:
    """The protocol's timings and sizes (every duration in seconds).

    Attributes:
        heartbeat_interval: an ``h`` frame after this long without any frame to a receiver
            (SockJS's 25 s, below the usual 30 to 60 s idle cut of proxies).
        disconnect_delay: how long a session without a receiver lives on (the gap between
            two polls; 5 s in sockjs-node and Spring).
        response_limit: bytes one streaming response carries before it ends and the client
            opens the next (128 KiB: the browser keeps a streamed response in memory).
    """

    heartbeat_interval: float = 25.0
    disconnect_delay: float = 5.0
    response_limit: int = 128 * 1024

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0 or self.disconnect_delay <= 0 or self.response_limit < 1:
            raise ValueError("heartbeat_interval, disconnect_delay and response_limit must be positive")


class State(enum.Enum):
    NEW = "new"  # made by a receiving request; the open frame not yet written
    OPEN = "open"  # open frame written; messages flow
    CLOSING = "closing"  # closed (by the application or an interrupt); close frame not yet written
    CLOSED = "closed"  # close frame written; served again to every later receiver
    EXPIRED = "expired"  # no receiver for the disconnect delay: forget the session


class Attach(enum.Enum):
    """The answer to :meth:`SockJSSession.attach`."""

    RECEIVE = "receive"  # this request is the session's receiver: write frames()
    BUSY = "busy"  # another receiver holds it: answer c[2010,...] and end
    CLOSED = "closed"  # the session has ended: answer its close frame and end


# (state, event) -> next state. Events: "written-open" (the open frame went out), "close"
# (the application or an interrupt closed it), "written-close" (the close frame went out),
# "expire" (no receiver for the disconnect delay). A pair missing here leaves the state as it is.
TRANSITIONS: dict[tuple[State, str], State] = {
    (State.NEW, "written-open"): State.OPEN,
    (State.NEW, "close"): State.CLOSING,
    (State.OPEN, "close"): State.CLOSING,
    (State.CLOSING, "written-close"): State.CLOSED,
    (State.NEW, "expire"): State.EXPIRED,
    (State.OPEN, "expire"): State.EXPIRED,
    (State.CLOSING, "expire"): State.EXPIRED,
    (State.CLOSED, "expire"): State.EXPIRED,
}


class SockJSSession:
    """The state of one SockJS session.

    Args:
        session_id: the id from the URL (never shown to the application).
        config: timings and sizes.
        now: the caller's monotonic clock, in seconds.
    """

    def __init__(self, session_id: str, config: SessionConfig | None = None, now: float = 0.0) -> None:
        self.session_id = session_id
        self.config = config or SessionConfig()
        self.state = State.NEW
        self.heartbeat_enabled = True
        self.close_reason: tuple[int, str] | None = None
        self._outgoing: list[str] = []
        self._outgoing_bytes = 0
        self._incoming: deque[str] = deque()
        self._receiver = 0  # the id of the attached receiver, 0 for none
        self._last_receiver = 0
        self._idle_since = now  # when the last receiver left (or the session was made)
        self._last_write = now  # when a frame last went to a receiver
        self._heartbeat_due = False
        self._open_pending = True  # the open frame goes first, even to a session closed at once

    # -- state ----------------------------------------------------------------------------

    def _event(self, event: str) -> None:
        self.state = TRANSITIONS.get((self.state, event), self.state)

    @property
    def closed(self) -> bool:
        """The session has ended for the application (its messages go nowhere now)."""
        return self.state in (State.CLOSING, State.CLOSED, State.EXPIRED)

    @property
    def expired(self) -> bool:
        """Forget the session: nothing will attach to it again."""
        return self.state is State.EXPIRED

    @property
    def receiving(self) -> bool:
        """A receiver is attached."""
        return self._receiver != 0

    @property
    def pending_bytes(self) -> int:
        """Characters of application messages queued and not yet written to a receiver."""
        return self._outgoing_bytes

    # -- receivers ------------------------------------------------------------------------

    def attach(self, now: float) -> tuple[Attach, int]:
        """A receiving request arrives.

        Returns:
            ``(Attach.RECEIVE, receiver_id)``: write :meth:`frames` until the session or the
            response ends, then call :meth:`detach` with that id. ``(Attach.BUSY, 0)`` or
            ``(Attach.CLOSED, 0)``: answer with :meth:`refusal_frame` and end.
        """
        if self.state in (State.CLOSED, State.EXPIRED):
            return Attach.CLOSED, 0
        if self._receiver:
            return Attach.BUSY, 0
        self._last_receiver += 1
        self._receiver = self._last_receiver
        self._last_write = now
        return Attach.RECEIVE, self._receiver

    def refusal_frame(self, answer: Attach) -> str:
        """The close frame for a receiver that :meth:`attach` turned away."""
        if answer is Attach.BUSY:
            return close_frame(*ANOTHER_CONNECTION)
        return close_frame(*(self.close_reason or GO_AWAY))

    def detach(self, receiver: int, now: float, interrupted: bool = False) -> None:
        """The receiver ``receiver`` has ended.

        Args:
            receiver: the id :meth:`attach` gave.
            now: the clock.
            interrupted: the client went away while receiving (a network error, or a
                SockJS client closing, which for HTTP transports just aborts its request):
                the session closes with 1002 "Connection interrupted".
        """
        if receiver != self._receiver or receiver == 0:
            return
        self._receiver = 0
        self._idle_since = now
        if interrupted and not self.closed:
            self.close(*INTERRUPTED)
            self._event("written-close")  # nobody can be told now; later receivers get it

    # -- the application's side -----------------------------------------------------------

    def send(self, message: str) -> None:
        """Queue one message for the client (ignored once the session is closed)."""
        if self.closed:
            return
        self._outgoing.append(message)
        self._outgoing_bytes += len(message)

    def close(self, code: int = GO_AWAY[0], reason: str = GO_AWAY[1]) -> None:
        """End the session: the next frame a receiver gets is ``c[code,reason]``.

        Messages queued before it still go out first. A second close changes nothing.
        """
        if self.closed:
            return
        self.close_reason = (code, reason)
        self._event("close")

    def disable_heartbeat(self) -> None:
        """Stop ``h`` frames: the protocol on top sends its own (STOMP heart-beats, as
        Spring turns SockJS heartbeats off once STOMP ones are negotiated)."""
        self.heartbeat_enabled = False

    def messages_received(self) -> list[str]:
        """The client's messages since the last call, in order."""
        messages = list(self._incoming)
        self._incoming.clear()
        return messages

    # -- the client's side ----------------------------------------------------------------

    def receive(self, messages: list[str]) -> None:
        """Messages the client sent (decoded by :func:`app.sockjs.framing.decode_messages`)."""
        if not self.closed:
            self._incoming.extend(messages)

    # -- writing --------------------------------------------------------------------------

    def frames(self, now: float, one: bool = False) -> list[str]:
        """The frames to write to the attached receiver now, in order (possibly none).

        Args:
            now: the clock.
            one: a polling receiver answers with one frame; the rest waits for the next poll.

        After the close frame nothing more is written: end the response.
        """
        out: list[str] = []
        if not self._receiver:
            return out
        if self._open_pending:
            self._open_pending = False
            out.append(OPEN_FRAME)
            self._event("written-open")
            if one:
                return self._wrote(out, now)
        if self._outgoing:
            out.append(message_frame(self._outgoing))
            self._outgoing = []
            self._outgoing_bytes = 0
            if one:
                return self._wrote(out, now)
        if self.state is State.CLOSING:
            out.append(close_frame(*(self.close_reason or GO_AWAY)))
            self._event("written-close")
        elif self._heartbeat_due and not out:
            out.append(HEARTBEAT_FRAME)
        return self._wrote(out, now)

    def _wrote(self, out: list[str], now: float) -> list[str]:
        if out:
            self._last_write = now
            self._heartbeat_due = False
        return out

    @property
    def finished(self) -> bool:
        """The close frame has been written: end the receiving response."""
        return self.state in (State.CLOSED, State.EXPIRED)

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (``None``: nothing, ever)."""
        if self.state is State.EXPIRED:
            return None
        if self._receiver:
            if self.heartbeat_enabled and not self.closed and not self._heartbeat_due:
                return self._last_write + self.config.heartbeat_interval
            return None  # nothing until the receiver writes (the due heartbeat, or a message)
        return self._idle_since + self.config.disconnect_delay

    def tick(self, now: float) -> None:
        """Let time pass: a heartbeat falls due, or a session without a receiver expires."""
        if self.state is State.EXPIRED:
            return
        if self._receiver:
            if self.heartbeat_enabled and not self.closed and now >= self._last_write + self.config.heartbeat_interval:
                self._heartbeat_due = True
        elif now >= self._idle_since + self.config.disconnect_delay:
            if not self.closed:
                self.close_reason = INTERRUPTED if self.close_reason is None else self.close_reason
            self._event("expire")
