"""A STOMP subscription to a work queue: one consumer of the queue store, fed to one session.

SUBSCRIBE ``/queue/<name>`` makes a :class:`~app.hub.queues.Consumer` whose prefetch is
the subscription's window; a greenlet takes what the store gives it and delivers each
message as a MESSAGE with the message's id as ``event-id``, ``delivery-count`` (1 the first
time) and, from the second delivery on, ``redelivered:true``. Then, by ack mode:

* ``auto``: acknowledged once the MESSAGE was written to the socket (not before: a message
  whose write failed goes back to the queue with the consumer).
* ``client`` / ``client-individual``: the session's ACK (cumulative in ``client`` mode)
  acknowledges it in the store; a NACK gives it back for another consumer (the session
  does not redeliver it itself: :attr:`StompConfig.shared_queue`); UNSUBSCRIBE, the end of
  the session, or the ack timeout give back every message still held.
"""

from __future__ import annotations

import logging
from typing import Callable

import gevent
import gevent.event

from ..hub import BackendUnavailable, Consumer, SubscriptionClosed
from ..stomp import StompSession
from .stomp_mapping import encode_message

__all__ = ["QueuePump"]

log = logging.getLogger(__name__)


class QueuePump:
    """One SUBSCRIBE to a queue (see the module docstring).

    Args:
        sub_id: the subscription id.
        consumer: the queue store's consumer.
        auto: ack mode ``auto`` (acknowledge on write).
    """

    def __init__(self, sub_id: str, consumer: Consumer, auto: bool) -> None:
        self.sub_id = sub_id
        self.consumer = consumer
        self.auto = auto
        self.window = gevent.event.Event()  # set when an ACK/NACK may have opened the window
        self.greenlet: gevent.Greenlet | None = None
        self._ids: dict[str, str] = {}  # STOMP message-id -> queue message id, until settled

    @property
    def subscription(self) -> Consumer:  # what the connection's cleanup closes
        return self.consumer

    def stop(self) -> None:
        """Close the consumer (what it held goes back to the queue) and wake the greenlet."""
        self.consumer.close()
        self.window.set()

    def ack(self, message_ids: tuple[str, ...]) -> None:
        """The session's ACK: acknowledge each message in the store."""
        self._settle(message_ids, self.consumer.ack)

    def nack(self, message_ids: tuple[str, ...]) -> None:
        """The session's NACK: give each message back for another consumer."""
        self._settle(message_ids, self.consumer.nack)

    def _settle(self, message_ids: tuple[str, ...], how: Callable[[str], bool]) -> None:
        for message_id in message_ids:
            event_id = self._ids.pop(message_id, None)
            if event_id is not None and not how(event_id):
                # Taken back after the ack timeout (and maybe given to someone else): late.
                log.info(
                    "queue %s: %s of message %s came after it was taken back",
                    self.consumer.queue,
                    how.__name__.upper(),
                    event_id,
                )
        self.window.set()

    def run(
        self,
        session: StompSession,
        deliver_done: Callable[[], bool],
        clock: Callable[[], float],
        fail: Callable[[str, str], None],
        count: Callable[[int], None],
    ) -> None:
        """Deliver until the consumer or the session ends.

        Args:
            session: the connection's session.
            deliver_done: write what the session queued (the connection's drain); True when
                the socket took it.
            clock: monotonic seconds.
            fail: ``fail(message, detail)``: end the session with an ERROR (store down).
            count: count delivered messages.
        """
        consumer, sub_id = self.consumer, self.sub_id
        try:
            while True:
                while not session.can_deliver(sub_id):
                    if session.closed or consumer.close_reason is not None:
                        return
                    self.window.clear()
                    self.window.wait()
                delivery = consumer.get()
                body, headers = encode_message(delivery.event)
                headers = (*headers, ("delivery-count", str(delivery.count)))
                message_id = session.deliver(
                    sub_id, body, headers, now=clock(), redelivered=delivery.redelivered, default_type=None
                )
                if message_id is None:  # the subscription ended meanwhile: the close gives it back
                    consumer.nack(delivery.event.id)
                    continue
                if not self.auto:
                    self._ids[message_id] = delivery.event.id
                written = deliver_done()
                count(1)
                if self.auto and written:
                    consumer.ack(delivery.event.id)  # auto: acknowledged on write
        except SubscriptionClosed:
            pass  # UNSUBSCRIBE, the end of the session, or the store's shutdown
        except BackendUnavailable as exc:
            log.warning("STOMP queue consumer of %s failed: backend unavailable: %s", consumer.queue, exc)
            fail(
                "backend unavailable",
                f"The queue store is unavailable: {exc}. Reconnect and SUBSCRIBE again; "
                "messages not acknowledged go to another consumer.",
            )
        finally:
            consumer.close()


def spawn(pump: QueuePump, *args) -> QueuePump:
    """Start ``pump.run(*args)`` in its own greenlet."""
    pump.greenlet = gevent.spawn(pump.run, *args)
    return pump
