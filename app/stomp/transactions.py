"""A STOMP session's open transactions (STOMP 1.2, "BEGIN", "COMMIT", "ABORT"), sans-I/O.

A transaction holds the SEND, ACK and NACK frames sent in it. COMMIT hands them all to the
broker at once (:class:`~app.stomp.requests.Commit`), which publishes every one or none;
ABORT drops them; a session that ends with transactions open aborts them (STOMP 1.2,
"BEGIN": "any transactions which have not been committed are implicitly aborted").
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import LimitExceeded, ProtocolViolation
from .frames import Frame
from .requests import Ack, Commit, Nack, Send

__all__ = ["Transactions"]


class Transactions:
    """The frames held by each open transaction of one session.

    Args:
        max_open: transactions open at once.
        max_frames: frames one transaction may hold before COMMIT.
    """

    def __init__(self, max_open: int, max_frames: int) -> None:
        self.max_open = max_open
        self.max_frames = max_frames
        self._open: dict[str, list[Frame]] = {}

    def __contains__(self, transaction: object) -> bool:
        return transaction in self._open

    def __len__(self) -> int:
        return len(self._open)

    def begin(self, transaction: str) -> None:
        """Open ``transaction``.

        Raises:
            ProtocolViolation: it is already open.
            LimitExceeded: ``max_open`` are open.
        """
        if transaction in self._open:
            raise ProtocolViolation("duplicate transaction", f"Transaction {transaction[:200]!r} is already open.")
        if len(self._open) >= self.max_open:
            raise LimitExceeded("too many transactions", f"At most {self.max_open} may be open at once.")
        self._open[transaction] = []

    def hold(self, transaction: str, frame: Frame) -> None:
        """Keep ``frame`` until ``transaction`` ends.

        Raises:
            ProtocolViolation: the transaction is not open.
            LimitExceeded: it holds ``max_frames`` already.
        """
        held = self._open.get(transaction)
        if held is None:
            raise ProtocolViolation("unknown transaction", f"No transaction {transaction[:200]!r} is open.")
        if len(held) >= self.max_frames:
            raise LimitExceeded("transaction too large", f"A transaction may hold at most {self.max_frames} frames.")
        held.append(frame)

    def end(self, transaction: str) -> list[Frame]:
        """Close ``transaction`` (COMMIT or ABORT) and return what it held, in order.

        Raises:
            ProtocolViolation: it is not open.
        """
        try:
            return self._open.pop(transaction)
        except KeyError:
            raise ProtocolViolation("unknown transaction", f"No transaction {transaction[:200]!r} is open.") from None

    def commit(
        self,
        transaction: str,
        receipt: str | None,
        send: Callable[[Frame], Send],
        settle: Callable[[Frame], Ack | Nack | None],
    ) -> Commit:
        """End ``transaction`` and make the broker's :class:`~app.stomp.requests.Commit` of it:
        each held SEND becomes ``send(frame)``, each held ACK or NACK ``settle(frame)`` (``None``
        when its message has been settled since: nothing is left to do).

        Raises:
            ProtocolViolation: it is not open.
        """
        items: list[Send | Ack | Nack] = []
        for held in self.end(transaction):
            item = send(held) if held.command == "SEND" else settle(held)
            if item is not None:
                items.append(item)
        # One request, even for an empty transaction: its RECEIPT waits for the broker.
        return Commit(transaction, tuple(items), receipt)

    def abort_all(self) -> None:
        """Drop every open transaction (the session ended)."""
        self._open.clear()
