"""The doctor's judges, fed measurements directly: each verdict and where its edges are."""

from __future__ import annotations

import pytest

from app.doctor.judges import (
    FORGED_ADDRESS,
    judge_buffering,
    judge_clock,
    judge_forwarded,
    judge_idle,
    judge_long_poll,
    judge_stomp,
    judge_upstream,
    judge_websocket,
)
from app.doctor.wire import Target


class TestBuffering:
    def test_spaced_events_pass(self):
        result = judge_buffering([0.5, 1.0, 1.5, 2.0], 4, 0.5)
        assert result.verdict == "ok" and "median 500 ms apart" in result.explanation

    def test_a_clump_is_a_problem(self):
        result = judge_buffering([3.01, 3.01, 3.02, 3.02], 4, 0.5, gzip=True)
        assert result.verdict == "problem" and "one clump" in result.explanation and "gzip" in result.explanation
        assert "proxy_buffering off;" in result.fix

    @pytest.mark.parametrize("spread, verdict", [(0.74, "problem"), (0.75, "ok")])
    def test_the_edge_is_half_the_sent_spread(self, spread, verdict):
        assert judge_buffering([1.0, 1.0 + spread / 2, 1.0 + spread], 3, 0.75).verdict == verdict

    def test_nothing_before_the_wait_ran_out(self):
        assert judge_buffering([], 4, 0.5, ended="timeout").verdict == "problem"

    def test_a_refused_stream_tells_nothing(self):
        assert judge_buffering([], 4, 0.5, status=429).verdict == "unknown"


class TestIdle:
    def test_survived_past_the_heartbeat(self):
        assert judge_idle(17, 15, survived=True, cut_after=None).verdict == "ok"

    def test_survived_but_not_long_enough_to_know(self):
        result = judge_idle(10, 15, survived=True, cut_after=None)
        assert result.verdict == "unknown" and "--idle-seconds" in result.explanation

    def test_cut_before_the_heartbeat(self):
        result = judge_idle(17, 15, survived=False, cut_after=3.0)
        assert result.verdict == "problem" and "proxy_read_timeout 60s;" in result.fix

    def test_cut_after_the_heartbeat_is_harmless(self):
        assert judge_idle(20, 15, survived=False, cut_after=18.0).verdict == "ok"


class TestLongPoll:
    def test_held_past_the_long_poll_timeout(self):
        assert judge_long_poll(27, 25, status=200, elapsed=27.01).verdict == "ok"

    @pytest.mark.parametrize("status", [504, 502, None])
    def test_a_gateway_timeout_before_it(self, status):
        assert judge_long_poll(27, 25, status=status, elapsed=3.0).verdict == "problem"

    def test_rate_limited_tells_nothing(self):
        assert judge_long_poll(27, 25, status=429, elapsed=0.01).verdict == "unknown"


class TestUpgrades:
    def test_websocket_ok(self):
        assert judge_websocket(status=101, reply='{"op":"ok","ref":"doctor"}', rtt=0.002).verdict == "ok"

    @pytest.mark.parametrize("status", [426, 200, 400, 502])
    def test_websocket_not_upgraded(self, status):
        assert judge_websocket(status=status).verdict == "problem"

    def test_websocket_closed_after_101(self):
        result = judge_websocket(status=101, reply=None, error="closed")
        assert result.verdict == "problem" and "101" in result.explanation

    def test_stomp_needs_its_sub_protocol_echoed(self):
        assert judge_stomp(status=101, protocol=None, reply="CONNECTED\n").verdict == "problem"
        assert judge_stomp(status=101, protocol="v12.stomp", reply="CONNECTED\nversion:1.2\n").verdict == "ok"
        assert judge_stomp(status=101, protocol="v12.stomp", reply="ERROR\nmessage:unauthorized\n").verdict == "ok"


class TestUpstream:
    @pytest.mark.parametrize(
        "protocol, connection",
        [("HTTP/1.0", "close"), ("HTTP/1.0", None), ("HTTP/1.1", "close"), ("HTTP/1.1", "keep-alive, Close")],
    )
    def test_http_10_or_close_is_the_seeds_pitfall(self, protocol, connection):
        result = judge_upstream(protocol, connection, reused=False)
        assert result.verdict == "problem" and 'proxy_set_header Connection "";' in result.fix

    def test_http_11_keep_alive(self):
        assert "was reused" in judge_upstream("HTTP/1.1", None, reused=True).explanation
        assert "keepalive 32;" in judge_upstream("HTTP/1.1", None, reused=False).explanation


def echo(client="127.0.0.1", scheme="http", host="h:8080", trusted=True, **forwarded):
    return {
        "forwarded": {"for": None, "proto": None, "host": None, **forwarded, "trusted": trusted},
        "seen": {"client": client, "scheme": scheme, "host": host},
    }


class TestForwarded:
    def judge(self, plain, forged, server="nginx", scheme="http", host="h:8080"):
        return judge_forwarded(plain, forged, scheme=scheme, host=host, server_header=server)

    def test_behind_nginx_trusted_and_not_forgeable(self):
        plain = echo("10.0.0.9", **{"for": "10.0.0.9", "proto": "http", "host": "h:8080"})
        assert self.judge(plain, echo("10.0.0.9", **{"for": f"{FORGED_ADDRESS}, 10.0.0.9"})).verdict == "ok"

    def test_a_forged_address_trusted(self):
        plain = echo("10.0.0.9", **{"for": "10.0.0.9"})
        result = self.judge(plain, echo(FORGED_ADDRESS, **{"for": FORGED_ADDRESS}))
        assert result.verdict == "problem" and "$proxy_add_x_forwarded_for" in result.fix

    def test_arriving_but_not_trusted(self):
        result = self.judge(echo(trusted=False, **{"for": "10.0.0.9"}), echo(trusted=False))
        assert result.verdict == "problem" and "SWITCHBOARD_BEHIND_PROXY=1" in result.fix

    def test_a_proxy_that_sends_none(self):
        assert self.judge(echo(trusted=False), echo(trusted=False)).verdict == "problem"

    def test_direct_and_untrusted(self):
        assert self.judge(echo(trusted=False), echo(trusted=False), server="gunicorn").verdict == "ok"

    def test_scheme_lost_on_the_way(self):
        plain = echo(scheme="http", **{"for": "10.0.0.9"})
        result = self.judge(plain, echo(**{"for": "10.0.0.9"}), scheme="https")
        assert result.verdict == "problem" and "X-Forwarded-Proto" in result.fix


class TestClock:
    def test_offset_from_the_fastest_round_trip(self):
        result = judge_clock([(100.0, 100.4, 105.0), (200.0, 200.002, 200.001)])
        assert result.verdict == "ok" and "+0 ms" in result.explanation

    def test_a_skewed_clock(self):
        result = judge_clock([(100.0, 100.01, 103.0)])
        assert result.verdict == "problem" and "+2995 ms" in result.explanation

    def test_no_samples(self):
        assert judge_clock([]).verdict == "unknown"


@pytest.mark.parametrize(
    "url, origin, host_header, prefix",
    [
        ("https://their.host/", "https://their.host", "their.host", ""),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "127.0.0.1:8080", ""),
        ("their.host:8443/switchboard/", "http://their.host:8443", "their.host:8443", "/switchboard"),
        ("http://[::1]:8080/", "http://[::1]:8080", "[::1]:8080", ""),
    ],
)
def test_target_from_a_base_url(url, origin, host_header, prefix):
    target = Target.parse(url)
    assert (target.origin, target.host_header, target.prefix) == (origin, host_header, prefix)


def test_target_refuses_other_schemes():
    with pytest.raises(ValueError):
        Target.parse("ftp://their.host/")
