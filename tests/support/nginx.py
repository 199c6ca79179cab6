"""A real nginx (Debian's package) running the repo's nginx.conf, on free ports.

The only changes made to the shipped file are the ones a deployer makes: the listen
port and the upstream address (plus, for the counter-test, whatever ``edit`` does).
With ``tls=True`` also the ones `make run-nginx` makes: the "#tls " lines turned on, on a
free port, with a self-signed certificate made by openssl where those lines look for it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable

import requests

from .servers import ROOT, free_port
from .timing import scaled, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def shipped_config() -> str:
    return (ROOT / "nginx.conf").read_text()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for 127.0.0.1 and localhost, made as the Makefile makes them."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=scaled(30),
    )
    return cert, key


def with_tls(config: str, port: int) -> str:
    """The config with its TLS and HTTP/2 lines on, listening on ``port``.

    The certificate paths stay as shipped (``.run/nginx/tls/`` under the config file's
    folder, which nginx reads them relative to): the caller puts a certificate there.
    """
    config, n_on = re.subn(r"(?m)^(\s*)#tls ", r"\1", config)
    config, n_listen = re.subn(r"listen 8443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;", config)
    assert n_on >= 3 and n_listen == 1, "nginx.conf no longer has the #tls lines the tests turn on"
    return config


class Nginx:
    def __init__(self, upstream_port: int, edit: Callable[[str], str] | None = None, tls: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tls_port = free_port() if tls else None
        self.tls_url = f"https://127.0.0.1:{self.tls_port}" if tls else None
        # Under the checkout, not the test's tmp dir: nginx workers run as an unprivileged
        # user when started as root, and pytest's tmp dirs are private to root.
        self.prefix = ROOT / ".run" / f"test-nginx-{self.port}"
        self.prefix.mkdir(parents=True, exist_ok=True)
        config = shipped_config()
        config, n_listen = re.subn(r"listen 8080;", f"listen 127.0.0.1:{self.port};", config)
        config, n_upstream = re.subn(r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};", config)
        assert n_listen == 1 and n_upstream == 1, "nginx.conf no longer has the DEPLOY lines the tests edit"
        self.certificate: Path | None = None  # with tls: the certificate a client can verify against
        if tls:
            self.certificate, _ = self_signed_certificate(self.prefix / ".run" / "nginx" / "tls")
            config = with_tls(config, self.tls_port)
        if edit is not None:
            config = edit(config)
        # Same relative layout as a checkout: static/ and .run/nginx/ under the prefix.
        (self.prefix / ".run" / "nginx").mkdir(parents=True, exist_ok=True)
        static = self.prefix / "static"
        if not static.exists():
            static.symlink_to(ROOT / "static")
        self.config_path = self.prefix / "nginx.conf"
        self.config_path.write_text(config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        self._log = open(self.prefix / "nginx.stderr", "ab")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", "nginx.conf", "-g", "daemon off;"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._ready, timeout=15, message=f"nginx on {self.url}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.log()}")
        try:
            requests.get(self.url + "/static/css/site.css", timeout=1)
            return True
        except requests.RequestException:
            return False

    def log(self) -> str:
        parts = []
        for name in ("nginx.stderr", ".run/nginx/error.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(scaled(5))
        if self.proc:
            self._log.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


# -- variants that break one thing (the proxy doctor's tests) ---------------------------


def replace_once(config: str, old: str, new: str) -> str:
    assert config.count(old) == 1, f"nginx.conf no longer has exactly one {old!r}"
    return config.replace(old, new)


def buffering_with_gzip(config: str) -> str:
    """A buffering proxy that compresses the stream. nginx honours the app's
    X-Accel-Buffering: no even with proxy_buffering on (tests/e2e/test_doctor.py shows it),
    so the variant also ignores that header, as a CDN or another proxy in the path would."""
    config = replace_once(
        config,
        "            proxy_buffering off;\n",
        "            proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;\n",
    )
    return replace_once(
        config, "            gzip off;\n", "            gzip on; gzip_min_length 0; gzip_types text/event-stream;\n"
    )


def no_upgrade_headers(config: str) -> str:
    config = replace_once(config, "            proxy_set_header Upgrade           $http_upgrade;\n", "")
    return replace_once(config, "            proxy_set_header Connection        $connection_upgrade;\n", "")


def read_timeout_3s(config: str) -> str:
    assert config.count("proxy_read_timeout 60s;") >= 3  # streams, long polls, WebSockets (and SockJS)
    return config.replace("proxy_read_timeout 60s;", "proxy_read_timeout 3s;")


def http_10_upstream(config: str) -> str:
    return replace_once(
        config,
        'proxy_http_version 1.1;\n        proxy_set_header Connection "";',
        "proxy_http_version 1.0;\n        proxy_set_header Connection close;",
    )
