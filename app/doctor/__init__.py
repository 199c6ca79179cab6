"""The proxy doctor from the command line: ``python -m app.doctor https://their.host/``.

Runs every check that needs no browser through whatever sits between this machine and a
Switchboard server (buffering, the idle cut, WebSocket and STOMP upgrades, the long-poll
timeout, the upstream HTTP version and keep-alive, forwarded headers, the clock) and
prints one line per check: ``ok|problem|unknown  <check>  <explanation>  fix: <line>``.
The exit status is 1 when a check found a problem (see ``cli.py``).

A client only: the standard library, no Flask, no gevent, so it runs from any CI image
with Python 3.10+ and a checkout (or a copy of this package). The server side is
``app/doctor_api.py``; the browser's version is the page ``/doctor``.
"""
