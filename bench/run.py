"""Run every benchmark scenario against Switchboard, Nchan and Flask-SocketIO in one go.

Usage (``make bench`` / ``make bench-quick`` set up bench/.venv and call this)::

    bench/.venv/bin/python bench/run.py [--quick] [--runs N] [--only idle,fanout,...]
                                        [--profile] [--out bench/results]

The servers run on core 0 (``taskset``), this process (every client and the publisher) on
core 1. Each measurement starts a fresh server, so no run inherits another's connections.
Within a run the servers are measured back to back for each scenario, and every ratio is
computed from figures of the same run; the report gives the median over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import scenarios  # noqa: E402
import servers  # noqa: E402
import uvloop  # noqa: E402
from servers import APP_PYTHON, ROOT, Nchan, Redis, SocketIO, Switchboard  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1

FULL = {
    "runs": 3,
    "idle_levels": [1000, 5000, 10000],
    "fanout_subscribers": [100, 1000],
    "burst_events": {100: 800, 1000: 200},
    "paced_rate": 50.0,
    "paced_seconds": 5,
    "overhead": {"subscribers": 100, "rate": 2.0, "duration": 5, "interval": 1.0},
    "inbound": {"small": (100, 10000), "64KiB": (64 * 1024, 1000)},
    "redis_subscribers": 1000,
    "redis_transports": ["websocket", "sse"],
    # A large room: 10,000 subscribers on one topic, one worker, 5 events/s for 10 s.
    "room": {"subscribers": 10000, "rate": 5.0, "seconds": 10},
    "idle_transports": ["sse", "websocket", "stomp", "long-polling"],
}
QUICK = {
    "runs": 1,
    "idle_levels": [1000],
    "fanout_subscribers": [1000],
    "burst_events": {100: 300, 1000: 60},
    "paced_rate": 50.0,
    "paced_seconds": 1,
    "overhead": {"subscribers": 50, "rate": 4.0, "duration": 1.5, "interval": 0.5},
    "inbound": {"small": (100, 3000), "64KiB": (64 * 1024, 200)},
    "redis_subscribers": 1000,
    "redis_transports": ["websocket"],
    "room": {"subscribers": 2000, "rate": 5.0, "seconds": 2},
    "idle_transports": ["sse", "websocket"],
}

# (server class, transports) per scenario: the anchors only where they have the transport.
FANOUT_TRANSPORTS = ["websocket", "sse", "stomp", "long-polling"]
ROOM_TRANSPORTS = ["websocket", "sse", "stomp"]
OVERHEAD_TRANSPORTS = ["polling", "long-polling"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


#: ``--servers``: which servers to measure (default all three).
SERVERS = {"switchboard", "nchan", "flask-socketio"}


def server_classes(include_nchan: bool) -> list:
    classes = [Switchboard]
    if include_nchan:
        classes.append(Nchan)
    classes.append(SocketIO)
    return [cls for cls in classes if cls.name in SERVERS]


def redis_backend_available() -> bool:
    return (ROOT / "app" / "hub" / "redis.py").exists() and Redis.available()


async def with_server(cls, body, **kwargs):
    server = cls(core=SERVER_CORE, **kwargs)
    await asyncio.to_thread(server.start)
    try:
        return await body(server)
    finally:
        await asyncio.to_thread(server.stop)
        # The load generator runs with the cyclic GC off (a collection over thousands of
        # connections would stall every client at once and show up as server latency);
        # it collects here, between measurements.
        gc.collect()


async def one_run(cfg: dict, only: set[str], include_nchan: bool, run_index: int) -> list[dict]:
    results: list[dict] = []
    classes = server_classes(include_nchan)

    def keep(result):
        result["run"] = run_index
        results.append(result)
        brief = {k: result.get(k) for k in ("scenario", "server", "transport", "subscribers", "connections", "size")}
        log(f"  {json.dumps({k: v for k, v in brief.items() if v is not None})}")

    if "idle" in only:
        log("idle capacity")
        for transport in cfg["idle_transports"]:
            for cls in classes:
                if transport not in cls.transports:
                    continue
                try:
                    rows = await with_server(cls, lambda s, t=transport: scenarios.idle(s, t, cfg["idle_levels"]))
                    for row in rows:
                        keep(row)
                except Exception as exc:  # one broken transport must not sink the run
                    keep({"scenario": "idle", "server": cls.name, "transport": transport, "error": repr(exc)})

    if "fanout" in only:
        log("fan-out")
        paced = int(cfg["paced_rate"] * cfg["paced_seconds"])

        async def fan(server, transport):
            # One server per transport for both sizes: each size has its own topic.
            rows = []
            for subs in cfg["fanout_subscribers"]:
                try:
                    rows.append(
                        await scenarios.fanout(
                            server, transport, subs, cfg["burst_events"][subs], paced, cfg["paced_rate"]
                        )
                    )
                except Exception as exc:
                    rows.append(
                        {
                            "scenario": "fanout",
                            "server": server.name,
                            "transport": transport,
                            "subscribers": subs,
                            "error": repr(exc),
                        }
                    )
            return rows

        for transport in FANOUT_TRANSPORTS:
            for cls in classes:
                if transport in cls.transports:
                    for row in await with_server(cls, lambda s, t=transport: fan(s, t)):
                        keep(row)

    if "room" in only:
        r = cfg["room"]
        log(f"large room ({r['subscribers']:,} subscribers, {r['rate']:g} events/s)")
        for transport in ROOM_TRANSPORTS:
            for cls in classes:
                if transport not in cls.transports or cls is SocketIO:
                    continue  # Switchboard and its C anchor (Nchan: WebSocket and SSE)
                try:
                    keep(
                        await with_server(
                            cls,
                            lambda s, t=transport: scenarios.room(s, t, r["subscribers"], r["rate"], r["seconds"]),
                        )
                    )
                except Exception as exc:
                    keep({"scenario": "room", "server": cls.name, "transport": transport, "error": repr(exc)})

    if "redis" in only and redis_backend_available():
        log("fan-out over Redis")
        subs = cfg["redis_subscribers"]
        paced = int(cfg["paced_rate"] * cfg["paced_seconds"])
        redis = Redis(core=SERVER_CORE)
        await asyncio.to_thread(redis.start)
        try:
            for workers in (1, 4):

                async def over_redis(server):
                    rows = []
                    for transport in cfg["redis_transports"]:
                        try:
                            rows.append(
                                await scenarios.fanout(
                                    server, transport, subs, cfg["burst_events"][subs], paced, cfg["paced_rate"]
                                )
                            )
                        except Exception as exc:
                            rows.append(
                                {
                                    "scenario": "fanout",
                                    "server": server.name,
                                    "transport": transport,
                                    "subscribers": subs,
                                    "error": repr(exc),
                                }
                            )
                    return rows

                try:
                    for row in await with_server(Switchboard, over_redis, workers=workers, redis_url=redis.url):
                        keep(row)
                except Exception as exc:
                    keep(
                        {
                            "scenario": "fanout",
                            "server": f"switchboard-redis-{workers}w",
                            "transport": "*",
                            "subscribers": subs,
                            "error": repr(exc),
                        }
                    )
        finally:
            await asyncio.to_thread(redis.stop)

    if "overhead" in only:
        log("polling overhead")
        o = cfg["overhead"]
        for transport in OVERHEAD_TRANSPORTS:
            for cls in classes:
                if transport not in cls.transports:
                    continue
                try:
                    keep(
                        await with_server(
                            cls,
                            lambda s, t=transport: scenarios.overhead(
                                s, t, o["subscribers"], o["rate"], o["duration"], o["interval"]
                            ),
                        )
                    )
                except Exception as exc:
                    keep({"scenario": "overhead", "server": cls.name, "transport": transport, "error": repr(exc)})

    if "inbound" in only:
        log("inbound")
        for transport in ("websocket", "stomp"):
            for _label, (size, count) in cfg["inbound"].items():
                try:
                    keep(
                        await with_server(
                            Switchboard, lambda s, t=transport, n=size, c=count: scenarios.inbound(s, t, n, c)
                        )
                    )
                except Exception as exc:
                    keep(
                        {
                            "scenario": "inbound",
                            "server": "switchboard",
                            "transport": transport,
                            "size": size,
                            "error": repr(exc),
                        }
                    )
        keep(await asyncio.to_thread(ws_inbound_run, cfg["quick"]))
    return results


def ws_inbound_run(quick: bool) -> dict:
    """bench/ws_inbound.py (stock gevent-websocket vs wsio receive path), pinned the same way."""
    out = ROOT / ".run" / "bench" / "ws_inbound.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(APP_PYTHON),
        str(HERE / "ws_inbound.py"),
        "--json",
        str(out),
        "--variants",
        "stock,wsio",
        "--server-cpu",
        str(SERVER_CORE),
        "--client-cpu",
        str(CLIENT_CORE),
    ] + (["--quick"] if quick else [])
    try:
        subprocess.run(command, cwd=ROOT, check=True, timeout=300, capture_output=True)
        data = json.loads(out.read_text())
        return {"scenario": "ws_inbound", "server": "raw-handler", "transport": "websocket", **data}
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        return {"scenario": "ws_inbound", "server": "raw-handler", "transport": "websocket", "error": repr(exc)}


async def profile(cfg: dict, out_dir: Path, transports=("websocket", "sse", "stomp")) -> dict:
    """py-spy samples of Switchboard's worker while 1,000 subscribers of each transport get
    a saturation burst, then 50 events/s: where the server core goes, per phase."""
    from clients import Group, close_group, open_group, open_publisher

    py_spy = Path(sys.executable).parent / "py-spy"
    found = {}
    for transport in transports:

        async def body(server, transport=transport):
            worker = server.worker_pids()[0]
            topic = scenarios.new_topic("prof")
            subs = cfg.get("profile_subscribers", 1000)
            group = Group(server.host, server.port, server.transports[transport], topic, subs)
            await open_group(group, subs)
            await scenarios.wait_server_count(server, topic, subs, 30, floor=subs)
            publisher = await open_publisher(
                server.host, server.port, server.publish_path.format(topic=topic), "switchboard", "/api/whoami"
            )
            phases = {}
            base = 0
            for phase_name, count, seconds in (("burst", 1000, 6), ("paced", 250, 6)):
                raw = out_dir / f"profile-{transport}-{phase_name}.collapsed"
                proc = await asyncio.create_subprocess_exec(
                    str(py_spy),
                    "record",
                    "--pid",
                    str(worker),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "250",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                await asyncio.sleep(0.5)
                phase = group.new_phase(base, count, latency=phase_name == "paced")
                meter = scenarios.Meter(server)
                if phase_name == "burst":
                    await publisher.burst(base, count, 8, 60)
                else:
                    await publisher.paced(base, count, cfg["paced_rate"], 60, window=1)
                dump = await asyncio.create_subprocess_exec(
                    str(py_spy),
                    "dump",
                    "--pid",
                    str(worker),
                    "--nonblocking",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                dump_text = (await dump.communicate())[0].decode(errors="replace")
                try:
                    await asyncio.wait_for(phase.done.wait(), 30)
                except asyncio.TimeoutError:
                    pass
                figures = {
                    **phase.summary(),
                    **meter.read(phase.last_arrival or None),
                    **scenarios.latency_ms(phase.latency),
                }
                figures["deliveries_per_s"] = round(figures["delivered"] / figures["seconds"])
                await asyncio.wait_for(proc.wait(), 30)
                summary = report.summarize_profile(raw) if raw.exists() else "py-spy wrote nothing"
                (out_dir / f"profile-{transport}-{phase_name}.txt").write_text(
                    f"Switchboard worker (pid {worker}), {phase_name} to {subs:,} {transport} subscribers\n"
                    f"{json.dumps(figures)}\n\n{summary}\n\npy-spy dump during the phase:\n{dump_text}"
                )
                raw.unlink(missing_ok=True)
                phases[phase_name] = {"figures": figures, "top": summary.splitlines()[:14]}
                base += count
            publisher.close()
            close_group(group)
            return phases

        found[transport] = await with_server(Switchboard, body)
    return found


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "pinned": len(os.sched_getaffinity(0)) == 1,
    }


async def main_async(args) -> int:
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick)
    if args.subscribers:
        cfg["profile_subscribers"] = int(args.subscribers.split(",")[0])
        cfg["fanout_subscribers"] = [int(n) for n in args.subscribers.split(",")]
        cfg["burst_events"] = {n: cfg["burst_events"].get(n, 200) for n in cfg["fanout_subscribers"]}
    if args.transports:
        FANOUT_TRANSPORTS[:] = [t for t in args.transports.split(",")]
        ROOM_TRANSPORTS[:] = [t for t in ROOM_TRANSPORTS if t in FANOUT_TRANSPORTS]
    if args.paced_seconds:
        cfg["paced_seconds"] = args.paced_seconds
    if args.room_subscribers:
        cfg["room"] = dict(cfg["room"], subscribers=args.room_subscribers)
    if args.servers:
        SERVERS.intersection_update(args.servers.split(","))
    scenarios.SETTLE = 0.1 if args.quick else 0.3
    runs = args.runs or cfg["runs"]
    only = set(args.only.split(",")) if args.only else {"idle", "fanout", "room", "redis", "overhead", "inbound"}
    include_nchan = Nchan.available()
    if not include_nchan:
        log("Nchan is not installed (Debian: libnginx-mod-nchan): its anchor is skipped")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if only == {"profile"}:
        log("profiling Switchboard under load (py-spy)")
        profiles = await profile(cfg, out_dir, *([tuple(args.transports.split(","))] if args.transports else []))
        (out_dir / "profiles.json").write_text(json.dumps(profiles, indent=1) + "\n")
        log(f"wrote {out_dir}/profile-*.txt and profiles.json")
        return 0
    all_runs = []
    for index in range(runs):
        log(f"run {index + 1} of {runs}")
        all_runs.append(await one_run(cfg, only, include_nchan, index))
    doc = report.build(
        all_runs,
        {
            "date": args.date or datetime.date.today().isoformat(),
            "mode": "quick" if args.quick else "full",
            "runs": runs,
            "machine": machine(),
            "config": {k: (str(v) if isinstance(v, dict) else v) for k, v in cfg.items()},
            "nchan": include_nchan,
            "redis_backend": redis_backend_available(),
            "nice": args.nice,
            "switchboard_env": servers.BENCH_LIMITS,
            "wall_seconds": None,
        },
    )
    if args.profile:
        log("profiling Switchboard under load (py-spy)")
        doc["profiles"] = await profile(cfg, out_dir)
    doc["meta"]["wall_seconds"] = round(time.time() - started, 1)
    name = args.name or ("latest-quick" if args.quick else "latest")
    table = report.table(doc)
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / f"{name}.txt").write_text(table + "\n")
    try:
        report.chart(doc, out_dir / f"{name}.png")
    except Exception as exc:  # the figures matter more than the picture
        log(f"chart failed: {exc!r}")
    print(table)
    log(f"wrote {out_dir / name}.json, .txt, .png in {doc['meta']['wall_seconds']} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, smaller N (under a minute)")
    parser.add_argument("--runs", type=int, help="runs to take the median of (default 3, quick 1)")
    parser.add_argument("--only", help="comma-separated: idle,fanout,room,redis,overhead,inbound; or 'profile' alone")
    parser.add_argument("--profile", action="store_true", help="also py-spy Switchboard under load")
    parser.add_argument("--subscribers", help="fan-out sizes, comma-separated (default 100,1000; quick 1000)")
    parser.add_argument("--transports", help="fan-out transports, comma-separated (default all streaming ones)")
    parser.add_argument("--room-subscribers", type=int, help="size of the large room (default 10,000; quick 2,000)")
    parser.add_argument("--servers", help="servers to measure, comma-separated: switchboard,nchan,flask-socketio")
    parser.add_argument("--paced-seconds", type=float, help="length of the 50 events/s window")
    parser.add_argument("--out", default=str(HERE / "results"), help="output directory")
    parser.add_argument("--name", help="output file stem (default latest, quick mode latest-quick)")
    parser.add_argument("--date", help="date written into the report (default today)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the servers and the load generator (e.g. -5 on a machine "
        "busy with other work; needs root for negative values)",
    )
    args = parser.parse_args()
    try:
        os.sched_setaffinity(0, {CLIENT_CORE})
    except (OSError, AttributeError):
        log("cannot pin the client to a core here: figures are not isolated")
    if args.nice:
        os.nice(args.nice)
        servers.NICE = args.nice
    gc.disable()
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
