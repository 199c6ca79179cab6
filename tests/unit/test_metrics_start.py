"""Metrics a dashboard can use from the first second: every labelled series of the known
transports exists at 0 from start-up, and delivery latency is a histogram per transport."""

from __future__ import annotations

import re

from app import create_app
from app.services import services


def series(text: str) -> dict[str, float]:
    return {match[1]: float(match[2]) for match in re.finditer(r"^(\w+\{[^}]*\}) (\S+)$", text, re.MULTILINE)}


def test_every_transport_series_exists_at_zero_before_any_traffic():
    app = create_app({"ticks": False})
    text = services(app).metrics.render()[0].decode()
    found = series(text)
    for transport in ("polling", "long-polling", "sse", "websocket", "stomp"):
        assert found[f'switchboard_events_delivered_total{{transport="{transport}"}}'] == 0
        assert found[f'switchboard_open_connections{{transport="{transport}"}}'] == 0
    for transport in ("http", "websocket", "stomp"):
        assert found[f'switchboard_publishes_total{{transport="{transport}"}}'] == 0
    for transport in ("sse", "websocket", "stomp"):
        assert found[f'switchboard_delivery_latency_seconds_count{{transport="{transport}"}}'] == 0
        assert f'switchboard_delivery_latency_seconds_bucket{{le="0.01",transport="{transport}"}}' in found
    for kind in ("resume", "slow"):
        assert found[f'switchboard_gaps_total{{kind="{kind}"}}'] == 0
