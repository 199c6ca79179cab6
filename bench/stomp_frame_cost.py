"""What the server spends per delivered STOMP MESSAGE on the fan-out path, in process.

The full bench (bench/run.py) measures CPU per delivery with real clients, sockets and a
machine's noise; this isolates the part that differs between transports: the fan-out
round's framing. It builds the real objects (a hub, the app's STOMP broker, ``N``
connections, each a STOMP 1.2 session with one auto-ack topic SUBSCRIBE and server
heart-beats; the client promises none, so that no session times out during the run) over outboxes that keep nothing, and the same number of ``/ws``
subscribers (:class:`~app.transports.websocket.WsJsonFramer`, one shared frame per event)
as the yardstick. Then, per transport and event, one publish and the fan-out round until
it is idle, like the bench's paced run (one event per round); the socket send is left out.

Two figures, the minimum and the median of ``--repeat`` interleaved runs, in CPU µs per delivery:

* ``round``: the whole fan-out round (take from the hub's queue, frame, write);
* ``frame``: the framer alone (``room()`` and ``frame()``), over the same connections.

Usage: ``.venv/bin/python bench/stomp_frame_cost.py [--subscribers 1000] [--events 200]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gevent  # noqa: E402

from app.config import Settings  # noqa: E402
from app.delivery import Delivery  # noqa: E402
from app.hub import Hub  # noqa: E402
from app.hub.memory import MemoryBackend  # noqa: E402
from app.stomp import StompSession  # noqa: E402
from app.transports.stomp_ws import Broker  # noqa: E402
from app.transports.websocket import WsJsonFramer  # noqa: E402

TOPIC = "bench"
DATA = {"text": "hello from the bench, a chat line of ordinary length", "n": 0}


class NullOutbox:
    """An outbox that takes everything at once and keeps only the byte count."""

    has_writer = False
    lost = False
    sealed = False

    backlog = 0
    last_write = 0.0

    def __init__(self) -> None:
        self.on_drained: list = []
        self.on_lost: list = []
        self.bytes = 0

    def write(self, pieces, *, last: bool = False) -> None:
        self.bytes += sum(map(len, pieces))


class NullSocket:
    """What a STOMP connection needs of its WebSocket: the outbox and a direct send."""

    close_code = None

    def __init__(self) -> None:
        self.outbox = NullOutbox()

    def send_encoded(self, data: bytes, binary: bool = False) -> None:
        pass

    def close(self, *args) -> None:
        pass


class WsConnection:
    _raw = True


def stomp_subscribers(hub: Hub, delivery: Delivery, count: int) -> list:
    broker = Broker.from_settings(hub, Settings.load({}))
    broker.delivery = delivery
    framers = []
    for _ in range(count):
        from app.transports.stomp_connection import Connection

        connection = Connection(broker, NullSocket(), "guest")
        connection.start()
        connection.on_message(b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:h\nheart-beat:0,10000\n\n\x00")
        connection.on_message(b"SUBSCRIBE\nid:sub-0\ndestination:/topic/" + TOPIC.encode() + b"\n\n\x00")
        framers.append(connection._pumps["sub-0"])
    return framers


def ws_subscribers(hub: Hub, delivery: Delivery, count: int) -> list:
    from app.delivery.stream import Stream  # noqa: F401  (the stream the delivery makes)

    framers = []
    for _ in range(count):
        stream = delivery.stream(NullOutbox(), "websocket")
        sub = hub.subscribe(TOPIC)
        framer = WsJsonFramer(WsConnection(), sub)  # type: ignore[arg-type]
        delivery.attach(stream, sub, framer, TOPIC)
        framers.append(framer)
    return framers


def run_rounds(hub: Hub, delivery: Delivery, events: int, subscribers: int) -> float:
    """µs per delivery of ``events`` publishes, each delivered by the fan-out until idle."""
    total = 0.0
    for n in range(events):
        hub.publish(TOPIC, {**DATA, "n": n}, sender="alice")
        start = CLOCK()
        gevent.sleep(0)
        delivery.idle.wait()
        total += CLOCK() - start
    return total / (events * subscribers) * 1e6


def frame_only(hub: Hub, framers: list, events: int) -> float:
    """µs per delivery of the framers alone (``room()`` if any, then ``frame()``)."""
    items = [hub.publish("bench.other", {**DATA, "n": n}, sender="alice") for n in range(events)]
    total = 0.0
    for item in items:
        batch = [item]
        start = CLOCK()
        for framer in framers:
            room = getattr(framer, "room", None)
            if room is None or room():
                framer.frame(batch, [])
        total += CLOCK() - start
    return total / (events * len(framers)) * 1e6


#: CPU time of this process: another process on the machine does not count (its cache
#: effects still do; hence the interleaved runs and the minimum).
CLOCK = time.process_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    variants = [("ws", ws_subscribers), ("stomp", stomp_subscribers)]
    direct = getattr(StompSession, "direct_messages", None)
    if direct is not None:
        variants.append(("stomp-queued", stomp_subscribers))  # every MESSAGE through the session's queue
    setups = {}
    for transport, build in variants:
        hub = Hub(MemoryBackend(1000, 3600.0), queue_size=256)
        delivery = Delivery()
        framers = build(hub, delivery, args.subscribers)
        delivery.idle.wait()
        run_rounds(hub, delivery, 5, args.subscribers)  # warm up
        setups[transport] = (hub, delivery, framers)
    results: dict[str, dict[str, list[float]]] = {name: {"round": [], "frame": []} for name in setups}
    gc.collect()
    gc.disable()
    try:
        for _ in range(args.repeat):  # interleaved: a busy spell of the machine hits all alike
            for transport, (hub, delivery, framers) in setups.items():
                if transport == "stomp-queued":
                    StompSession.direct_messages = lambda self, sub_id, count, now: None  # type: ignore[method-assign]
                try:
                    results[transport]["round"].append(run_rounds(hub, delivery, args.events, args.subscribers))
                    results[transport]["frame"].append(frame_only(hub, framers, args.events))
                finally:
                    if direct is not None:
                        StompSession.direct_messages = direct  # type: ignore[method-assign]
    finally:
        gc.enable()
    for transport, (_hub, _delivery, framers) in setups.items():
        if transport != "ws":  # a session that ended would have made its figures too good
            assert not any(framer.connection.session.closed for framer in framers)
    print(
        f"{args.subscribers} subscribers, {args.events} events, {args.repeat} runs: CPU µs per delivery, min / median"
    )
    for kind in ("round", "frame"):
        ws = min(results["ws"][kind])
        line = f"  {kind:6} ws {ws:5.2f} / {statistics.median(results['ws'][kind]):5.2f}"
        for transport, _build in variants[1:]:
            cost = min(results[transport][kind])
            median = statistics.median(results[transport][kind])
            line += f"   {transport} {cost:5.2f} / {median:5.2f} (min x{cost / ws:4.2f}, +{cost - ws:4.2f})"
        print(line)


if __name__ == "__main__":
    main()
