"""Property test: over random interleavings of publish, subscribe, take and poll, every
subscriber and every poller sees each event exactly once and in order, or an explicit gap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.events import Event, Gap
from app.hub import Hub, SubscriptionClosed
from app.hub.memory import MemoryBackend

ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 12)),
        st.tuples(st.just("subscribe"), st.integers(-2, 60)),  # -2 other epoch, -1 live only, n: after event n
        st.tuples(st.just("take"), st.integers(0, 7), st.integers(1, 15)),
        st.tuples(st.just("poll"), st.integers(-2, 60), st.integers(1, 10)),
    ),
    max_size=60,
)


def seq(event: Event) -> int:
    return event.cursor.position[0]


@settings(max_examples=300, deadline=None)
@given(history_size=st.integers(1, 12), queue_size=st.integers(1, 6), script=ops)
def test_every_event_once_in_order_or_an_explicit_gap(history_size, queue_size, script):
    hub = Hub(MemoryBackend(history_size, 3600.0, epoch="ep"), queue_size=queue_size)
    published: list[Event] = []
    subs = []  # (subscription, last seq seen, got list)

    def cursor_for(choice: int) -> str | None:
        if choice == -2:
            return "other-3"
        if choice == -1 or not published:
            return None
        return published[min(choice, len(published) - 1)].id

    def take(state, n):
        sub, _, got = state
        for _ in range(n):
            try:
                item = sub.get(timeout=0)
            except SubscriptionClosed:
                return
            if item is None:
                return
            got.append(item)

    for op in script:
        if op[0] == "publish":
            for _ in range(op[1]):
                published.append(hub.publish("t", len(published)))
        elif op[0] == "subscribe":
            since = cursor_for(op[1])
            start = 0 if since is None or since.startswith("other") else int(since.split("-")[1])
            if since is None:
                start = seq(published[-1]) if published else 0
            subs.append([hub.subscribe("t", since=since), start, []])
        elif op[0] == "take" and subs:
            take(subs[op[1] % len(subs)], op[2])
        elif op[0] == "poll":
            since = cursor_for(op[1])
            page = hub.history("t", since=since, limit=op[2])
            numbers = [seq(e) for e in page.events]
            assert numbers == sorted(set(numbers))
            if numbers and since and not since.startswith("other") and not page.gap:
                assert numbers[0] == int(since.split("-")[1]) + 1, "polling skipped events without a gap"
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else True

    last_published = seq(published[-1]) if published else 0
    for state in subs:
        take(state, 10_000)
        sub, previous, got = state
        gap_pending = False
        closed_after_slow_gap = False
        for item in got:
            if isinstance(item, Gap):
                gap_pending = True
                closed_after_slow_gap = item.slow
                continue
            n = seq(item)
            assert n > previous, "duplicate or out of order"
            assert n == previous + 1 or gap_pending, f"event(s) {previous + 1}..{n - 1} lost without a gap"
            previous, gap_pending = n, False
        if not closed_after_slow_gap:
            assert previous == last_published or (previous < last_published and sub.closed), (
                "an open subscription must end up with every event"
            )
