"""The delivery layer (app/delivery/) over real sockets and the real in-memory hub:
write-through, a writer greenlet only while a connection has a backlog, order and
exactly-once across a partial send, the slow-consumer rule, the write timeout, shutdown.

Each connection is one end of a gevent socket pair; the test reads the other end.
Waits are bounded: they wait for the fan-out to go idle, or for bytes, never a fixed time.
"""

from __future__ import annotations

import gc
import socket as stdlib_socket
import time

import gevent
import gevent.socket
import pytest

from app.delivery import Delivery
from app.events import Gap
from app.hub import Hub
from app.hub.memory import MemoryBackend
from app.server.outbox import Outbox
from tests.support.timing import scaled

BIG = "x" * 200_000  # larger than any socket buffer below: its send is partial


class LineFramer:
    """A transport's framing, reduced to one line per item: ``<id> <n>``."""

    def __init__(self):
        self.closed_with: list[str] = []

    def frame(self, items, out):
        events = 0
        for item in items:
            if isinstance(item, Gap):
                out.append(b"gap slow=%d\n" % item.slow)
            else:
                # Built once per event and shared by every connection, as the transports do.
                out.append(
                    item.encoded(
                        "test-line",
                        lambda e: (
                            b"%s %s %s\n" % (e.id.encode(), str(e.data["n"]).encode(), e.data.get("pad", "").encode())
                        ),
                    )
                )
                events += 1
        return events

    def closed(self, reason, out):
        self.closed_with.append(reason)
        if reason == "shutdown":
            out.append(b"bye\n")
        return True


def live_greenlets() -> set[gevent.Greenlet]:
    """The live greenlets. Tests compare what appeared since a snapshot, so a greenlet of an
    earlier test in the same process ending meanwhile changes nothing."""
    return {obj for obj in gc.get_objects() if isinstance(obj, gevent.Greenlet) and not obj.dead}


def wait_for(predicate, timeout=5.0, message="condition"):
    """Poll ``predicate`` with gevent.sleep (the fan-out runs meanwhile), bounded."""
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        gevent.sleep(0.005)


class Peer:
    """The client end of one connection: reads and parses the lines the stream wrote."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def lines(self):
        return [line for line in self.buf.split(b"\n")[:-1]]

    def read_lines(self, count, timeout=5.0):
        deadline = time.monotonic() + scaled(timeout)
        while len(self.lines()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.lines())} lines of {count}")
            with gevent.Timeout(remaining, False):
                data = self.sock.recv(1 << 20)
                if not data:
                    raise AssertionError("the connection closed")
                self.buf += data
        return self.lines()


@pytest.fixture
def hub():
    hub = Hub(MemoryBackend(1000, 3600.0), queue_size=64)
    yield hub
    hub.close()


@pytest.fixture
def delivery():
    counted: dict[str, int] = {}
    latencies: list[tuple[str, float]] = []
    delivery = Delivery(
        delivered=lambda transport, n: counted.__setitem__(transport, counted.get(transport, 0) + n),
        observe_latency=lambda transport, seconds: latencies.append((transport, seconds)),
    )
    delivery.counted = counted
    delivery.latencies = latencies
    yield delivery
    delivery.close()


def connect(delivery, hub, topic, *, small=False, write_timeout=None, since=None):
    server, client = gevent.socket.socketpair()
    if small:
        server.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
        client.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    stream = delivery.stream(Outbox(server, "peer", write_timeout), "test", "peer")
    framer = LineFramer()
    delivery.attach(stream, hub.subscribe(topic, since=since), framer)
    return stream, framer, Peer(client)


def settle(delivery):
    assert delivery.idle.wait(scaled(5)), "the fan-out did not catch up"


def ids(lines):
    return [line.split(b" ")[1] for line in lines]


def test_write_through_to_many_connections_spawns_no_writer(hub, delivery):
    conns = [connect(delivery, hub, "t") for _ in range(50)]
    gevent.sleep(0)  # the fan-out greenlet starts (the attaches made it ready)
    settle(delivery)
    before = live_greenlets()
    for n in range(5):
        hub.publish("t", {"n": n})
    settle(delivery)
    assert not live_greenlets() - before, "no greenlet per connection while every socket keeps up"
    for stream, _, peer in conns:
        assert ids(peer.read_lines(5)) == [b"0", b"1", b"2", b"3", b"4"]
        assert not stream.has_writer and stream.backlog == 0
    assert delivery.counted == {"test": 250}


def test_one_round_for_a_burst_and_one_event_framed_once(hub, delivery):
    conns = [connect(delivery, hub, "t") for _ in range(3)]
    gevent.sleep(0)
    settle(delivery)
    rounds = delivery.rounds
    events = [hub.publish("t", {"n": n}) for n in range(10)]
    settle(delivery)
    assert delivery.rounds == rounds + 1, "the burst was delivered in one round"
    # Latency is observed once per round and transport, not per event or connection.
    assert len(delivery.latencies) == 1 and delivery.latencies[0][0] == "test"
    assert 0 <= delivery.latencies[0][1] < scaled(5)
    blobs = {id(event._cache["test-line"]) for event in events}
    assert len(blobs) == 10
    for _, _, peer in conns:
        assert len(peer.read_lines(10)) == 10


def test_partial_send_delivers_every_event_once_in_order_after_the_peer_drains(hub, delivery):
    stalled, _, peer = connect(delivery, hub, "t", small=True)
    healthy, _, other = connect(delivery, hub, "t")
    gevent.sleep(0)
    settle(delivery)
    base = live_greenlets()
    sent = [hub.publish("t", {"n": 0, "pad": BIG}).id]
    settle(delivery)
    # The socket took part of the event: the rest waits in the buffer, with a writer.
    assert stalled.backlog > 0 and stalled.has_writer
    assert len(live_greenlets() - base) == 1, "exactly one writer greenlet, for the stalled connection"
    assert not healthy.has_writer
    # Events published during the stall wait in the subscription, not in the buffer.
    backlog = stalled.backlog
    sent += [hub.publish("t", {"n": n}).id for n in range(1, 6)]
    settle(delivery)
    assert stalled.backlog == backlog
    assert ids(other.read_lines(6)) == [b"0", b"1", b"2", b"3", b"4", b"5"], "others never wait"
    # The peer reads: everything arrives once, in order, and the writer goes away.
    lines = peer.read_lines(6, timeout=10)
    assert [line.split(b" ")[0].decode() for line in lines] == sent
    assert len(lines[0]) == len(sent[0]) + 3 + len(BIG), "the first event whole, not cut at the partial send"
    wait_for(lambda: not stalled.has_writer, message="the writer to end once drained")
    settle(delivery)
    assert not live_greenlets() - base, "no greenlet left once the backlog is gone"
    # Back to write-through.
    hub.publish("t", {"n": 6})
    settle(delivery)
    assert ids(peer.read_lines(7))[-1] == b"6" and not stalled.has_writer


def test_slow_consumer_gets_a_gap_then_its_stream_ends(delivery):
    hub = Hub(MemoryBackend(3, 3600.0), queue_size=2)
    try:
        stream, framer, peer = connect(delivery, hub, "t", small=True)
        gevent.sleep(0)
        settle(delivery)
        for n in range(12):
            hub.publish("t", {"n": n, "pad": BIG})
        settle(delivery)
        assert stream.has_writer
        # The peer drains; the connection learns it fell behind history: gap, then the end.
        with gevent.Timeout(scaled(20)):
            while not peer.buf.endswith(b"gap slow=1\n"):
                data = peer.sock.recv(1 << 20)
                assert data, "the connection closed before the gap"
                peer.buf += data
        assert stream.done.wait(scaled(5)), "the stream ended after its gap"
        lines = peer.lines()
        assert lines[-1] == b"gap slow=1", lines[-3:]
        got = [int(line.split(b" ")[1]) for line in lines[:-1]]
        assert got == list(range(len(got))) and len(got) < 12, "in order, then the gap"
        assert framer.closed_with == ["slow consumer"]
        assert hub.subscriber_count("t") == 0
    finally:
        hub.close()


def test_write_timeout_cuts_a_peer_that_reads_nothing(hub, delivery):
    stream, _, peer = connect(delivery, hub, "t", small=True, write_timeout=0.2)
    gevent.sleep(0)
    settle(delivery)
    hub.publish("t", {"n": 0, "pad": BIG})
    assert stream.done.wait(scaled(5)), "cut after the write timeout"
    assert stream.lost and not stream.has_writer
    assert hub.subscriber_count("t") == 0, "its subscription is released"


def test_a_gone_peer_ends_the_stream_and_releases_the_subscription(hub, delivery):
    stream, _, peer = connect(delivery, hub, "t")
    gevent.sleep(0)
    settle(delivery)
    peer.sock.close()
    hub.publish("t", {"n": 0})
    hub.publish("t", {"n": 1})
    assert stream.done.wait(scaled(5))
    assert hub.subscriber_count("t") == 0


def test_shutdown_writes_the_framers_last_bytes_then_ends(hub, delivery):
    stream, framer, peer = connect(delivery, hub, "t")
    gevent.sleep(0)
    hub.publish("t", {"n": 0})
    settle(delivery)
    hub.close("shutdown")
    assert stream.done.wait(scaled(5))
    assert ids(peer.read_lines(2)[:1]) == [b"0"] and peer.lines()[1] == b"bye"
    assert framer.closed_with == ["shutdown"]


def test_replay_then_live_across_the_seam(hub, delivery):
    first = hub.publish("t", {"n": 0})
    for n in range(1, 4):
        hub.publish("t", {"n": n})
    stream, _, peer = connect(delivery, hub, "t", since=first.id)
    hub.publish("t", {"n": 4})  # before the fan-out ran: queued live while history replays
    settle(delivery)
    hub.publish("t", {"n": 5})
    assert ids(peer.read_lines(5)) == [b"1", b"2", b"3", b"4", b"5"]


def test_a_backlog_larger_than_a_batch_leaves_over_several_rounds_in_order(hub, delivery):
    delivery.batch = 10
    stream, _, peer = connect(delivery, hub, "t")
    gevent.sleep(0)
    settle(delivery)
    rounds = delivery.rounds
    for n in range(35):
        hub.publish("t", {"n": n})
    settle(delivery)
    assert delivery.rounds - rounds == 4
    assert ids(peer.read_lines(35)) == [str(n).encode() for n in range(35)]


class TakeThatWaits:
    """A subscription whose take() waits once after reading, as a history read from Redis
    does; while it waits, ``meanwhile`` runs in another greenlet (a connection's reader)."""

    def __init__(self, subscription, meanwhile):
        self.subscription = subscription
        self.meanwhile = meanwhile

    def take(self, max_items):
        items = self.subscription.take(max_items)
        if items and self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            gevent.spawn(meanwhile).join()
        return items

    def __getattr__(self, name):
        return getattr(self.subscription, name)


def rest_of(peer, quiet=0.2):
    """What else the peer received: read until nothing came for ``quiet`` seconds."""
    while True:
        data = None
        with gevent.Timeout(scaled(quiet), False):
            data = peer.sock.recv(1 << 20)
        if not data:
            return peer.lines()
        peer.buf += data


def test_nothing_of_a_feed_follows_the_reply_that_let_it_go_while_its_take_waited(hub, delivery):
    server, client = gevent.socket.socketpair()
    stream = delivery.stream(Outbox(server, "peer", None), "test", "peer")
    peer = Peer(client)
    feeds = {}

    def unsubscribe():  # the reader: let the feed go, then say so
        feeds["t"].detach()
        stream.outbox.write([b"reply\n"])

    feeds["t"] = delivery.attach(stream, TakeThatWaits(hub.subscribe("t"), unsubscribe), LineFramer())
    gevent.sleep(0)
    hub.publish("t", {"n": 1})
    settle(delivery)
    assert rest_of(peer) == [b"reply"], "an event taken before the unsubscribe went out after its reply"


def test_a_feed_written_in_a_round_is_out_before_another_feed_waits(hub, delivery):
    server, client = gevent.socket.socketpair()
    stream = delivery.stream(Outbox(server, "peer", None), "test", "peer")
    peer = Peer(client)
    feeds = {}

    def unsubscribe_a():  # while b's take waits: a is let go, and the client told
        feeds["a"].detach()
        stream.outbox.write([b"reply\n"])

    feeds["a"] = delivery.attach(stream, hub.subscribe("a"), LineFramer())
    feeds["b"] = delivery.attach(stream, TakeThatWaits(hub.subscribe("b"), unsubscribe_a), LineFramer())
    gevent.sleep(0)
    settle(delivery)
    hub.publish("a", {"n": 1})
    hub.publish("b", {"n": 2})
    settle(delivery)
    lines = rest_of(peer)
    assert b"reply" in lines and len(lines) == 3, lines
    a_event = next(i for i, line in enumerate(lines) if line != b"reply" and ids([line]) == [b"1"])
    assert a_event < lines.index(b"reply"), f"a's event came after the reply that ended a: {lines}"
