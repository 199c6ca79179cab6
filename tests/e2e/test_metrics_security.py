"""/metrics in Prometheus text format, and the security headers on pages."""

from __future__ import annotations

import json

import requests
from prometheus_client.parser import text_string_to_metric_families

JSON = {"Content-Type": "application/json"}


def samples(base: str) -> dict[str, float]:
    res = requests.get(base + "/metrics", timeout=5)
    assert res.status_code == 200 and res.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_metrics_count_publishes_and_report_the_backend(server):
    before = samples(server.url).get("switchboard_events_published_total", 0)
    for n in range(3):
        res = requests.post(f"{server.url}/api/topics/metrics/events", data=json.dumps({"data": n}),
                            headers=JSON, timeout=5)
        assert res.status_code == 201
    after = samples(server.url)
    assert after["switchboard_events_published_total"] == before + 3
    assert after["switchboard_backend_up{backend=memory}"] == 1
    assert "switchboard_subscriptions" in after


def test_pages_carry_a_strict_csp_and_security_headers(server):
    res = requests.get(server.url + "/polling", timeout=5)
    csp = res.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "object-src 'none'" in csp
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["Referrer-Policy"] == "same-origin"
    api = requests.get(server.url + "/healthz", timeout=5)
    assert api.headers["X-Content-Type-Options"] == "nosniff"
