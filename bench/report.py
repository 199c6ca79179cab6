"""Turn the runs' raw results into the report: one JSON document, a table, a PNG chart.

Every figure is the median over the runs; every ratio is computed inside each run (the
two servers measured back to back) and then the median of those ratios is taken, because
the machines are shared and noisy. Lost, duplicated and out-of-order events are summed
over the runs: one is already a failure.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

SB, NCHAN, SIO = "switchboard", "nchan", "flask-socketio"

# (name, numerator, denominator, figure, target, "min"|"max", text)
RATIO_TARGETS = [
    (
        "fanout_1000_websocket_vs_socketio",
        (SB, "websocket"),
        (SIO, "websocket"),
        "deliveries_per_s",
        3.0,
        "min",
        "fan-out at saturation, 1,000 subscribers: Switchboard WebSocket / Flask-SocketIO",
    ),
    (
        "fanout_1000_sse_vs_socketio",
        (SB, "sse"),
        (SIO, "websocket"),
        "deliveries_per_s",
        3.0,
        "min",
        "fan-out at saturation, 1,000 subscribers: Switchboard SSE / Flask-SocketIO",
    ),
    (
        "fanout_1000_websocket_vs_nchan",
        (SB, "websocket"),
        (NCHAN, "websocket"),
        "deliveries_per_s",
        0.5,
        "min",
        "fan-out at saturation, 1,000 subscribers: Switchboard WebSocket / Nchan WebSocket",
    ),
    (
        "fanout_1000_sse_vs_nchan",
        (SB, "sse"),
        (NCHAN, "sse"),
        "deliveries_per_s",
        0.5,
        "min",
        "fan-out at saturation, 1,000 subscribers: Switchboard SSE / Nchan SSE",
    ),
    (
        "p99_1000_websocket_vs_nchan",
        (SB, "websocket"),
        (NCHAN, "websocket"),
        "p99_ms",
        1.5,
        "max",
        "latency p99 at 50 events/s to 1,000 subscribers: Switchboard WebSocket / Nchan WebSocket",
    ),
    (
        "p99_1000_sse_vs_nchan",
        (SB, "sse"),
        (NCHAN, "sse"),
        "p99_ms",
        1.5,
        "max",
        "latency p99 at 50 events/s to 1,000 subscribers: Switchboard SSE / Nchan SSE",
    ),
]


def _median(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    m = statistics.median(values)
    return round(m, 3) if isinstance(m, float) else m


def _key(row: dict) -> str:
    return f"{row['server']}/{row['transport']}"


def _fanout(run: list[dict], server: str, transport: str, subs: int) -> dict | None:
    for row in run:
        if (
            row.get("scenario") == "fanout"
            and row.get("server") == server
            and row.get("transport") == transport
            and row.get("subscribers") == subs
            and "saturation" in row
        ):
            return row
    return None


def _figure(row: dict | None, figure: str):
    if row is None:
        return None
    if figure == "deliveries_per_s":
        return row["saturation"]["deliveries_per_s"]
    if figure == "deliveries_per_server_cpu_s":
        sat = row["saturation"]
        return sat["deliveries_per_s"] / sat["server_cpu"] if sat["server_cpu"] else None
    return row["paced"].get(figure)


def _ratio(num, den):
    if num is None or den in (None, 0):
        return None
    return num / den


def build(runs: list[list[dict]], meta: dict) -> dict:
    """The report document: meta, per-transport medians, ratios with targets, raw rows."""
    transports: dict[str, dict] = defaultdict(lambda: {"lost": 0, "duplicated": 0, "out_of_order": 0})
    fan = defaultdict(list)  # (key, subs) -> rows
    idle = defaultdict(list)  # (key, level) -> kb
    over = defaultdict(list)  # key -> rows
    inbound = defaultdict(list)  # (transport, size) -> rows
    rooms = defaultdict(list)  # key -> rows
    raw_ws = []
    errors = []
    for run in runs:
        for row in run:
            if "error" in row:
                errors.append(row)
                continue
            kind = row["scenario"]
            if kind == "fanout":
                fan[(_key(row), row["subscribers"])].append(row)
                for part in ("saturation", "paced"):
                    for field in ("lost", "duplicated", "out_of_order"):
                        transports[_key(row)][field] += row[part][field]
            elif kind == "idle":
                idle[(_key(row), row["connections"])].append(row["kb_per_conn"])
            elif kind == "overhead":
                over[_key(row)].append(row)
                for field in ("lost", "duplicated", "out_of_order"):
                    transports[_key(row)][field] += row[field]
            elif kind == "room":
                rooms[_key(row)].append(row)
                for field in ("lost", "duplicated", "out_of_order"):
                    transports[_key(row)][field] += row[field]
            elif kind == "inbound":
                inbound[(row["transport"], row["size"])].append(row)
            elif kind == "ws_inbound":
                raw_ws.append(row)

    fanout_summary = {}
    for (key, subs), rows in sorted(fan.items()):
        sat = [r["saturation"] for r in rows]
        paced = [r["paced"] for r in rows]
        entry = {
            "deliveries_per_s": _median([s["deliveries_per_s"] for s in sat]),
            "deliveries_per_server_cpu_s": _median(
                [s["deliveries_per_s"] / s["server_cpu"] if s["server_cpu"] else None for s in sat]
            ),
            "server_cpu": _median([s["server_cpu"] for s in sat]),
            "client_cpu": _median([s["client_cpu"] for s in sat]),
            "client_saturated": any(s["client_saturated"] for s in sat),
            "p50_ms": _median([p["p50_ms"] for p in paced]),
            "p99_ms": _median([p["p99_ms"] for p in paced]),
            "max_ms": _median([p["max_ms"] for p in paced]),
            "paced_client_saturated": any(p["client_saturated"] for p in paced),
            "others_on_server_core": _median([x.get("others_on_server_core") for x in sat + paced]),
            "others_on_client_core": _median([x.get("others_on_client_core") for x in sat + paced]),
            "bytes_per_event": _median([p["bytes_per_event"] for p in paced]),
            "requests_per_event": _median([p["requests_per_event"] for p in paced]),
            "lost": sum(s["lost"] + p["lost"] for s, p in zip(sat, paced)),
            "duplicated": sum(s["duplicated"] + p["duplicated"] for s, p in zip(sat, paced)),
            "out_of_order": sum(s["out_of_order"] + p["out_of_order"] for s, p in zip(sat, paced)),
            "runs": len(rows),
        }
        # The single closed-loop publisher (bench runs from before it existed have none).
        closed = [r["closed_loop"] for r in rows if "closed_loop" in r]
        entry.update(
            {
                "paced_server_us_per_delivery": _median([p.get("server_us_per_delivery") for p in paced]),
                "paced_server_cpu": _median([p["server_cpu"] for p in paced]),
                "paced_client_cpu": _median([p["client_cpu"] for p in paced]),
                "paced_delivered_per_s": _median(
                    [p["delivered"] / p["seconds"] if p.get("seconds") else None for p in paced]
                ),
            }
        )
        if closed:
            entry.update(
                {
                    "closed_loop_deliveries_per_s": _median([c["deliveries_per_s"] for c in closed]),
                    "closed_loop_events_per_s": _median([c["events_per_s"] for c in closed]),
                    "closed_loop_server_us_per_delivery": _median([c["server_us_per_delivery"] for c in closed]),
                    "closed_loop_client_cpu": _median([c["client_cpu"] for c in closed]),
                    "closed_loop_p99_ms": _median([c["p99_ms"] for c in closed]),
                }
            )
            for field in ("lost", "duplicated", "out_of_order"):
                entry[field] += sum(c[field] for c in closed)
        fanout_summary.setdefault(key, {})[str(subs)] = entry
        t = transports[key]
        t.setdefault("deliveries_per_s", {})[str(subs)] = entry["deliveries_per_s"]
        t.setdefault("deliveries_per_server_cpu_s", {})[str(subs)] = entry["deliveries_per_server_cpu_s"]
        t.setdefault("client_saturated", {})[str(subs)] = entry["client_saturated"]
        t.setdefault("latency_ms", {})[str(subs)] = {
            "p50": entry["p50_ms"],
            "p99": entry["p99_ms"],
            "max": entry["max_ms"],
        }
        t.setdefault("bytes_per_event", entry["bytes_per_event"])
        t.setdefault("requests_per_event", entry["requests_per_event"])

    idle_summary = {}
    for (key, level), values in sorted(idle.items()):
        idle_summary.setdefault(key, {})[str(level)] = _median(values)
        transports[key].setdefault("kb_per_conn", {})[str(level)] = _median(values)

    overhead_summary = {}
    for key, rows in sorted(over.items()):
        entry = {
            f: _median([r[f] for r in rows])
            for f in ("requests_per_event", "bytes_per_event", "p50_ms", "p99_ms", "max_ms", "server_cpu")
        }
        entry.update({f: sum(r[f] for r in rows) for f in ("lost", "duplicated", "out_of_order")})
        entry.update({f: rows[0][f] for f in ("subscribers", "rate", "interval_s", "events")})
        overhead_summary[key] = entry
        transports[key]["requests_per_event"] = entry["requests_per_event"]
        transports[key]["bytes_per_event"] = entry["bytes_per_event"]
        transports[key].setdefault("latency_ms", {})["overhead"] = {
            "p50": entry["p50_ms"],
            "p99": entry["p99_ms"],
            "max": entry["max_ms"],
        }

    inbound_summary = {}
    for (transport, size), rows in sorted(inbound.items()):
        inbound_summary[f"switchboard/{transport}/{size}"] = {
            "message_bytes": rows[0]["message_bytes"],
            "msgs_per_s": _median([r["msgs_per_s"] for r in rows]),
            "mb_per_s": _median([r["mb_per_s"] for r in rows]),
            "server_cpu": _median([r["server_cpu"] for r in rows]),
            "client_cpu": _median([r["client_cpu"] for r in rows]),
            "errors": sum(r["errors"] for r in rows),
        }
    raw_summary = {}
    for row in raw_ws:
        for variant, workloads in row.get("results", {}).items():
            for workload, figures in workloads.items():
                raw_summary.setdefault(variant, {}).setdefault(workload, []).append(figures)
    raw_summary = {
        v: {
            w: {"mb_per_s": _median([f["mb_per_s"] for f in fs]), "msgs_per_s": _median([f["msgs_per_s"] for f in fs])}
            for w, fs in ws.items()
        }
        for v, ws in raw_summary.items()
    }

    room_summary = {}
    for key, rows in sorted(rooms.items()):
        room_summary[key] = {
            "subscribers": rows[0]["subscribers"],
            "rate": rows[0]["rate"],
            "events": rows[0]["events"],
            **{
                f: _median([r.get(f) for r in rows])
                for f in (
                    "deliveries_per_s",
                    "server_us_per_delivery",
                    "server_cpu",
                    "client_cpu",
                    "p50_ms",
                    "p99_ms",
                    "max_ms",
                    "others_on_server_core",
                    "open_seconds",
                )
            },
            "client_saturated": any(r["client_saturated"] for r in rows),
            **{f: sum(r[f] for r in rows) for f in ("lost", "duplicated", "out_of_order")},
            "runs": len(rows),
        }
    # Each Switchboard room row against Nchan's in the same run (STOMP against Nchan's WebSocket).
    for key, entry in room_summary.items():
        server, transport = key.split("/", 1)
        if server != SB:
            continue
        anchor = f"{NCHAN}/{'websocket' if transport == 'stomp' else transport}"
        for figure in ("server_us_per_delivery", "p99_ms"):
            per_run = []
            for run in runs:
                a = next((r for r in run if r.get("scenario") == "room" and _key(r) == key and "error" not in r), None)
                b = next(
                    (r for r in run if r.get("scenario") == "room" and _key(r) == anchor and "error" not in r), None
                )
                per_run.append(_ratio(a and a.get(figure), b and b.get(figure)))
            entry[f"{figure}_vs_nchan"] = _median(per_run)

    ratios = {}
    for name, num, den, figure, target, sense, text in RATIO_TARGETS:
        per_run = []
        per_run_cpu = []
        den_saturated = False
        for run in runs:
            a, b = _fanout(run, *num, 1000), _fanout(run, *den, 1000)
            per_run.append(_ratio(_figure(a, figure), _figure(b, figure)))
            if figure == "deliveries_per_s":
                per_run_cpu.append(
                    _ratio(_figure(a, "deliveries_per_server_cpu_s"), _figure(b, "deliveries_per_server_cpu_s"))
                )
                den_saturated |= bool(b and b["saturation"]["client_saturated"])
            else:
                den_saturated |= bool(b and b["paced"]["client_saturated"])
        value = _median(per_run)
        entry = {
            "text": text,
            "numerator": "/".join(num),
            "denominator": "/".join(den),
            "figure": figure,
            "target": target,
            "sense": sense,
            "median": value,
            "per_run": per_run,
            "met": None if value is None else (value >= target if sense == "min" else value <= target),
        }
        if per_run_cpu:
            entry["per_server_cpu_second"] = _median(per_run_cpu)
        if den_saturated:
            entry["note"] = (
                "the denominator's client core was saturated: its figure is a lower bound, "
                "so this ratio is an upper bound; per_server_cpu_second compares CPU cost instead"
            )
        ratios[name] = entry

    # Server CPU per delivered event with the single closed-loop publisher at the fixed rate,
    # against Nchan in the same run: 1.5x its own transport for WebSocket and SSE, 2x its
    # WebSocket for STOMP.
    for subs in (100, 1000):
        for transport, anchor, target in (
            ("websocket", "websocket", 1.5),
            ("sse", "sse", 1.5),
            ("stomp", "websocket", 2.0),
        ):
            per_run = []
            for run in runs:
                a, b = _fanout(run, SB, transport, subs), _fanout(run, NCHAN, anchor, subs)
                per_run.append(_ratio(_figure(a, "server_us_per_delivery"), _figure(b, "server_us_per_delivery")))
            value = _median(per_run)
            if value is None:
                continue
            ratios[f"cpu_per_delivery_{subs}_{transport}_vs_nchan"] = {
                "text": f"server CPU per delivery at 50 events/s to {subs:,} subscribers: Switchboard "
                f"{transport} / Nchan {anchor}",
                "numerator": f"{SB}/{transport}",
                "denominator": f"{NCHAN}/{anchor}",
                "figure": "server_us_per_delivery",
                "target": target,
                "sense": "max",
                "median": value,
                "per_run": per_run,
                "met": value <= target,
            }
    stomp = fanout_summary.get(f"{SB}/stomp", {}).get("1000")
    if stomp and stomp.get("paced_delivered_per_s") is not None:
        wanted = 50 * 1000
        value = stomp["paced_delivered_per_s"] / wanted
        ratios["stomp_1000_keeps_up"] = {
            "text": "STOMP at 50 events/s to 1,000 subscribers on one worker: deliveries/s in the window / 50,000",
            "figure": "paced_delivered_per_s",
            "target": 0.95,
            "sense": "min",
            "median": round(value, 3),
            "met": value >= 0.95,
        }

    # Absolute targets.
    for transport in ("websocket", "sse"):
        fig = fanout_summary.get(f"{SB}/{transport}", {}).get("1000")
        if fig:
            bad = fig["lost"] + fig["duplicated"] + fig["out_of_order"]
            ratios[f"fanout_1000_{transport}_integrity"] = {
                "text": f"Switchboard {transport}: lost + duplicated + out-of-order events, 1,000 subscribers, all runs",
                "figure": "lost+duplicated+out_of_order",
                "target": 0,
                "sense": "max",
                "median": bad,
                "met": bad == 0,
            }
        levels = idle_summary.get(f"{SB}/{transport}", {})
        if levels:
            top = max(levels, key=int)
            value = levels[top]
            ratios[f"idle_kb_{transport}"] = {
                "text": f"idle memory per open Switchboard {transport} connection at {int(top):,} connections (KB)",
                "figure": "kb_per_conn",
                "connections": int(top),
                "target": 20.0,
                "sense": "max",
                "median": value,
                "met": None if value is None else value <= 20.0,
                "nchan": idle_summary.get(f"{NCHAN}/{transport}", {}).get(top),
                "flask_socketio": idle_summary.get(f"{SIO}/websocket", {}).get(top),
            }
    sb_lp, nc_lp = overhead_summary.get(f"{SB}/long-polling"), overhead_summary.get(f"{NCHAN}/long-polling")
    if sb_lp and nc_lp:
        per_run = []
        for run in runs:
            a = next(
                (
                    r
                    for r in run
                    if r.get("scenario") == "overhead" and _key(r) == f"{SB}/long-polling" and "error" not in r
                ),
                None,
            )
            b = next(
                (
                    r
                    for r in run
                    if r.get("scenario") == "overhead" and _key(r) == f"{NCHAN}/long-polling" and "error" not in r
                ),
                None,
            )
            per_run.append(_ratio(a and a["bytes_per_event"], b and b["bytes_per_event"]))
        value = _median(per_run)
        ratios["longpoll_bytes_vs_nchan"] = {
            "text": "long polling bytes on the wire per delivered event: Switchboard / Nchan",
            "figure": "bytes_per_event",
            "target": 1.0,
            "sense": "max",
            "median": value,
            "per_run": per_run,
            "met": None if value is None else value <= 1.0,
            "absolute": {"switchboard": sb_lp["bytes_per_event"], "nchan": nc_lp["bytes_per_event"]},
        }
    stock = raw_summary.get("stock", {}).get("text 64 KiB")
    wsio = raw_summary.get("wsio", {}).get("text 64 KiB")
    if stock and wsio:
        value = _ratio(wsio["mb_per_s"], stock["mb_per_s"])
        ratios["inbound_64k_text_vs_stock"] = {
            "text": "inbound WebSocket, 64 KiB text messages: wsio receive path / stock gevent-websocket",
            "figure": "mb_per_s",
            "target": 10.0,
            "sense": "min",
            "median": round(value, 2),
            "met": value >= 10.0,
            "absolute": {"wsio": wsio["mb_per_s"], "stock": stock["mb_per_s"]},
        }
        e2e = inbound_summary.get(f"switchboard/websocket/{64 * 1024}")
        if e2e:
            value = _ratio(e2e["mb_per_s"], stock["mb_per_s"])
            ratios["inbound_64k_ws_app_vs_stock"] = {
                "text": "inbound /ws publish ops of 64 KiB through the whole app (gunicorn, JSON, hub) / stock "
                "gevent-websocket's bare receive path",
                "figure": "mb_per_s",
                "target": 10.0,
                "sense": "min",
                "median": round(value, 2),
                "met": value >= 10.0,
                "absolute": {"switchboard_ws": e2e["mb_per_s"], "stock": stock["mb_per_s"]},
            }

    return {
        "meta": meta,
        "transports": dict(transports),
        "fanout": fanout_summary,
        "idle": idle_summary,
        "room": room_summary,
        "overhead": overhead_summary,
        "inbound": inbound_summary,
        "ws_inbound": raw_summary,
        "ratios": ratios,
        "errors": errors,
        "raw": runs,
    }


# ---------------------------------------------------------------------- table


def _n(value, digits=0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{round(value):,}"


def table(doc: dict) -> str:
    m = doc["meta"]
    out = [
        f"Switchboard benchmarks, {m['date']}, {m['machine']['cpus']} cores (server on core "
        f"{m['machine']['server_core']}, load on core {m['machine']['client_core']}), {m['mode']} mode, "
        f"median of {m['runs']} run(s)"
    ]
    others = [e.get("others_on_server_core") for v in doc["fanout"].values() for e in v.values()]
    others = [o for o in others if o is not None]
    if others:
        out.append(
            f"Other processes' CPU on the server core during fan-out: median {statistics.median(others):.2f}, "
            f"max {max(others):.2f} (0 = a quiet machine)"
        )
    out.append("")
    out.append(
        "Fan-out: deliveries/s at saturation; latency publish->arrival at 50 events/s; lost/dup/ooo over all runs"
    )
    out.append(
        f"{'server/transport':<31}{'S=100':>10}{'S=1000':>10}{'/srv-CPU-s':>11}"
        f"{'p50 ms':>9}{'p99 ms':>10}{'max ms':>9}{'lost/dup/ooo':>14}{'B/event':>9}"
    )
    for key, by_s in doc["fanout"].items():
        a, b = by_s.get("100", {}), by_s.get("1000", {})
        star = lambda e: "*" if e.get("client_saturated") else " "  # noqa: E731
        lat = b or a
        lat_star = "*" if lat.get("paced_client_saturated") else " "
        bad = (
            sum(e.get(f, 0) for e in (a, b) for f in ("lost",)),
            sum(e.get(f, 0) for e in (a, b) for f in ("duplicated",)),
            sum(e.get(f, 0) for e in (a, b) for f in ("out_of_order",)),
        )
        out.append(
            f"{key:<31}{_n(a.get('deliveries_per_s')):>9}{star(a)}{_n(b.get('deliveries_per_s')):>9}{star(b)}"
            f"{_n(b.get('deliveries_per_server_cpu_s')):>11}{_n(lat.get('p50_ms'), 1):>9}"
            f"{_n(lat.get('p99_ms'), 1):>9}{lat_star}{_n(lat.get('max_ms'), 1):>9}{'/'.join(map(str, bad)):>14}"
            f"{_n(lat.get('bytes_per_event')):>9}"
        )
    out.append(
        "  * the client core was saturated: the figure is a lower bound for that server "
        "(a starred p99: the latency includes the client's own queueing)"
    )
    out.append("  /srv-CPU-s: deliveries per second of server CPU at S=1000 (fair when the client is the limit)")
    out.append("")
    out.append(
        "Single publisher: closed loop (next event after the last ack) as fast as acked, and 50 events/s "
        "on schedule; server CPU per delivered event; load generator CPU share"
    )
    out.append(
        f"{'server/transport':<31}{'S':>6}{'ev/s':>8}{'deliv/s':>10}{'us/deliv':>10}{'lg CPU':>8}"
        f"{'| 50/s us/deliv':>15}{'srv CPU':>8}{'lg CPU':>8}{'p99 ms':>9}"
    )
    for key, by_s in doc["fanout"].items():
        for subs, e in sorted(by_s.items(), key=lambda kv: int(kv[0])):
            out.append(
                f"{key:<31}{subs:>6}{_n(e.get('closed_loop_events_per_s')):>8}"
                f"{_n(e.get('closed_loop_deliveries_per_s')):>10}"
                f"{_n(e.get('closed_loop_server_us_per_delivery'), 1):>10}"
                f"{_n(e.get('closed_loop_client_cpu'), 2):>8}"
                f"{_n(e.get('paced_server_us_per_delivery'), 1):>15}{_n(e.get('paced_server_cpu'), 2):>8}"
                f"{_n(e.get('paced_client_cpu'), 2):>8}{_n(e.get('p99_ms'), 1):>9}"
            )
    out.append("")
    if doc.get("room"):
        first = next(iter(doc["room"].values()))
        out.append(
            f"Large room: {first['subscribers']:,} subscribers on one topic, one worker, single closed-loop "
            f"publisher at {first['rate']:g} events/s ({first['events']} events); x Nchan: in the same run "
            "(STOMP against Nchan's WebSocket)"
        )
        out.append(
            f"{'server/transport':<31}{'deliv/s':>9}{'us/deliv':>9}{'x Nchan':>8}{'srv CPU':>8}{'lg CPU':>8}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'x Nchan':>8}{'max ms':>9}{'lost/dup/ooo':>14}"
        )
        for key, e in doc["room"].items():
            star = "*" if e.get("client_saturated") else " "
            out.append(
                f"{key:<31}{_n(e.get('deliveries_per_s')):>9}{_n(e.get('server_us_per_delivery'), 1):>9}"
                f"{_n(e.get('server_us_per_delivery_vs_nchan'), 2):>8}{_n(e.get('server_cpu'), 2):>8}"
                f"{_n(e.get('client_cpu'), 2):>7}{star}{_n(e.get('p50_ms'), 1):>9}{_n(e.get('p99_ms'), 1):>9}"
                f"{_n(e.get('p99_ms_vs_nchan'), 2):>8}{_n(e.get('max_ms'), 1):>9}"
                f"{str(e['lost']) + '/' + str(e['duplicated']) + '/' + str(e['out_of_order']):>14}"
            )
        out.append("")
    levels = sorted({int(lvl) for v in doc["idle"].values() for lvl in v})
    out.append("Idle memory: KB per open connection (RSS of all server processes minus the baseline)")
    out.append(f"{'server/transport':<31}" + "".join(f"{f'N={lvl:,}':>10}" for lvl in levels))
    for key, by_level in doc["idle"].items():
        out.append(f"{key:<31}" + "".join(f"{_n(by_level.get(str(lvl)), 1):>10}" for lvl in levels))
    out.append("")
    if doc["overhead"]:
        first = next(iter(doc["overhead"].values()))
        out.append(
            f"Polling overhead: {first['subscribers']} subscribers, {first['rate']:g} events/s, "
            f"interval {first['interval_s']:g} s"
        )
        out.append(
            f"{'server/transport':<31}{'req/event':>10}{'B/event':>10}{'p50 ms':>9}{'p99 ms':>9}{'lost/dup/ooo':>14}"
        )
        for key, e in doc["overhead"].items():
            out.append(
                f"{key:<31}{_n(e['requests_per_event'], 2):>10}{_n(e['bytes_per_event']):>10}"
                f"{_n(e['p50_ms'], 1):>9}{_n(e['p99_ms'], 1):>9}"
                f"{str(e['lost']) + '/' + str(e['duplicated']) + '/' + str(e['out_of_order']):>14}"
            )
        out.append("")
    if doc["inbound"] or doc["ws_inbound"]:
        out.append("Inbound: messages one worker receives")
        out.append(f"{'path':<40}{'msg bytes':>10}{'msgs/s':>10}{'MB/s':>9}")
        for key, e in doc["inbound"].items():
            out.append(f"{key:<40}{_n(e['message_bytes']):>10}{_n(e['msgs_per_s']):>10}{_n(e['mb_per_s'], 1):>9}")
        for variant, workloads in doc["ws_inbound"].items():
            for workload, e in workloads.items():
                out.append(
                    f"{'raw handler ' + variant + ', ' + workload:<40}{'':>10}{_n(e['msgs_per_s']):>10}"
                    f"{_n(e['mb_per_s'], 1):>9}"
                )
        out.append("")
    out.append("Targets")
    for _name, r in doc["ratios"].items():
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[r["met"]]
        sign = ">=" if r["sense"] == "min" else "<="
        extra = f" (per server CPU second: {r['per_server_cpu_second']:.2f})" if r.get("per_server_cpu_second") else ""
        value = (
            "-" if r["median"] is None else f"{r['median']:.2f}" if isinstance(r["median"], float) else str(r["median"])
        )
        out.append(f"  [{verdict:^7}] {r['text']}: {value} (target {sign} {r['target']}){extra}")
    if doc["errors"]:
        out.append("")
        out.append("Errors")
        for row in doc["errors"]:
            out.append(f"  {row.get('scenario')} {row.get('server')}/{row.get('transport')}: {row['error'][:160]}")
    return "\n".join(out)


# ---------------------------------------------------------------------- chart


def chart(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [
        (name, r)
        for name, r in doc["ratios"].items()
        if isinstance(r.get("median"), (int, float)) and r.get("target") not in (0, None)
    ]
    if not ratios:
        return  # nothing to chart (a run of the room or idle scenario alone)
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1.1, 1]})
    labels = [name.replace("_", " ") for name, _ in ratios]
    values = [
        r["median"] / r["target"] if r["sense"] == "min" else r["target"] / max(r["median"], 1e-9) for _, r in ratios
    ]
    colors = ["#2a9d8f" if r["met"] else "#e76f51" for _, r in ratios]
    left.barh(labels, values, color=colors)
    left.axvline(1.0, color="black", linewidth=1)
    left.set_xscale("log")
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if min(values) / 2 <= t <= max(values) * 2]
    left.set_xticks(ticks, [f"{t:g}" for t in ticks])
    left.minorticks_off()
    left.set_xlabel("figure / target (>= 1 means the target is met)")
    left.set_title("Targets (each ratio taken within one run, median of runs)")
    for y, (_, r) in enumerate(ratios):
        left.text(
            values[y],
            y,
            f"  {r['median']:.2f}" if isinstance(r["median"], float) else f"  {r['median']}",
            va="center",
            fontsize=8,
        )
    keys = [k for k, v in doc["fanout"].items() if "1000" in v]
    dps = [doc["fanout"][k]["1000"]["deliveries_per_s"] or 0 for k in keys]
    bar_colors = [
        "#264653"
        if k.startswith(SB + "/")
        else "#e9c46a"
        if k.startswith(NCHAN)
        else "#f4a261"
        if k.startswith(SIO)
        else "#8ab17d"
        for k in keys
    ]
    right.barh(keys, dps, color=bar_colors, hatch=None)
    for y, k in enumerate(keys):
        if doc["fanout"][k]["1000"].get("client_saturated"):
            right.text(dps[y], y, "  client-bound (lower bound)", va="center", fontsize=8)
    right.set_xlabel("deliveries per second at saturation, 1,000 subscribers")
    right.set_title("Fan-out (server on one core)")
    m = doc["meta"]
    fig.suptitle(
        f"Switchboard vs Nchan vs Flask-SocketIO, {m['date']}, {m['machine']['cpus']} cores, {m['mode']} "
        f"mode, median of {m['runs']} run(s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- profiles


def summarize_profile(raw: Path, top: int = 25) -> str:
    """py-spy's raw (collapsed) stacks -> the hottest functions by own and total samples."""
    own, total = defaultdict(int), defaultdict(int)
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return "no samples"
    lines = [f"{samples} samples", "", "own time (where the CPU is):"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / samples:5.1f}%  {frame}")
    lines += ["", "total time (including callees):"]
    for frame, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / samples:5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


if __name__ == "__main__":  # re-render the table and chart of a saved run: report.py results/latest.json
    import json
    import sys

    source = Path(sys.argv[1])
    saved = json.loads(source.read_text())
    saved = build(saved["raw"], saved["meta"])  # the figures again, with this report's summaries and targets
    print(table(saved))
    chart(saved, source.with_suffix(".png"))
