"""gunicorn settings for Switchboard. Each setting says why it has its value.

Run: ``gunicorn -c gunicorn.conf.py wsgi:app``. Settings come from the same environment
variables as the app (see app/config.py); a bad value stops start-up with its name.
"""

import os
import secrets
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app.config import ConfigError, Settings  # noqa: E402

try:
    _settings = Settings.load()
except ConfigError as _exc:
    sys.exit(f"switchboard: configuration error: {_exc}")

# Every worker must sign session cookies with the same key, or a browser's identity
# would change from one worker to the next. Made once here, in the master, and inherited.
os.environ.setdefault("SWITCHBOARD_SECRET_KEY", secrets.token_hex(32))

# Metrics from every worker are aggregated through files in one directory
# (prometheus-client's multiprocess mode); a fresh one per master start.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="switchboard-metrics-")

# Loopback by default: nginx (nginx.conf) is the public face. $PORT picks the port.
bind = os.environ.get("SWITCHBOARD_BIND", f"127.0.0.1:{_settings.port}")

# Our subclass of gevent-websocket's worker: it uses the handler that checks Origin,
# negotiates STOMP sub-protocols and enforces message limits *before* the 101.
worker_class = "app.server.lifecycle.Worker"

# One worker with the in-memory hub; several only with Redis (checked in on_starting).
workers = _settings.web_concurrency

# Open streams per worker. gunicorn's default of 1000 would cap SSE/WebSocket clients;
# a greenlet per connection costs a few KB. The open-file limit (ulimit -n) must be
# higher still: raise it in the service manager (LimitNOFILE=) if it is 1024.
worker_connections = 20000

# The worker heartbeat timeout. gevent workers notify the arbiter from their own
# greenlet, so long-lived streams do not trip it; 30 s catches a truly stuck worker.
timeout = 30

# Time a worker gets after SIGTERM to close its streams before it is killed. It needs far
# less: it stops accepting, closes idle keep-alive connections, and the app's shutdown hook
# ends each stream its own way (SSE: a last jittered retry:, long polls: 204, STOMP: ERROR
# then 1001, /ws: 1001); see app/server/lifecycle.py graceful_shutdown. Clients resume with
# their cursors. A HUP reload stops the old workers the same way.
graceful_timeout = 10

# No `keepalive` here: gunicorn's setting does not reach gevent's pywsgi server, which
# keeps an idle connection (nginx's upstream pool, a browser) open until the client
# closes it. On shutdown the worker closes idle connections at once (app/server/registry.py).

# Logs to stderr; the access log is off by default because polling makes it noisy.
accesslog = os.environ.get("SWITCHBOARD_ACCESS_LOG") or None

# The access log never holds a credential: the values of ?token=, ?access_token= and
# ?ticket= (refused or single-use, but the request is still logged), Authorization,
# Cookie and Set-Cookie are replaced by [redacted] in every atom. Server-side module
# (app/server/access_log.py): it imports gunicorn and nothing from the app.
logger_class = "app.server.access_log.RedactingLogger"
errorlog = "-"
loglevel = _settings.log_level.lower()

# gunicorn 25+ opens a control socket at one fixed path per user; two servers on one
# machine (a second "host", the test suite) would fight over it. Signals (HUP, TERM,
# TTIN/TTOU) control the master instead.
control_socket_disable = True

# No preload: each worker builds its own app (and hub) after the fork, so no greenlet,
# socket or Redis connection is shared across processes.
preload_app = False


def on_starting(server):
    """Refuse several workers without Redis, whatever the command line said."""
    if server.cfg.workers > 1 and not _settings.redis_enabled:
        sys.exit(
            f"switchboard: {server.cfg.workers} workers need SWITCHBOARD_REDIS_URL; with the "
            "in-memory hub each worker has its own audience and a publish reaches only the "
            "clients of the worker that took it. Use one worker or configure Redis."
        )


def child_exit(server, worker):
    """Drop a dead worker's live gauges (open connections, subscriptions) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this master made."""
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
