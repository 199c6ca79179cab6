# Two commands: `make run` serves the demo on :8000, `make test` sets everything up and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Programs the test suite starts for real, and the Debian packages that provide them.
SYSTEM_DEPS := nginx:nginx redis-server:redis-server chromium:chromium openssl:openssl
# A font with Hangul, so that Chromium draws the Korean pages (and their screenshots) in letters, not boxes.
KOREAN_FONT := fonts-nanum
PYTEST_ARGS ?=
NGINX ?= $(shell command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
TLS_DIR := .run/nginx/tls

.PHONY: run run-auth run-nginx run-redis run-cluster test test-fast lint system-deps node-deps clean help bench bench-quick translations pot

help:
	@echo "make run        serve the demo on http://127.0.0.1:8000 (in-memory hub, one worker)"
	@echo "make run-auth   the same with access control on: sign in as alice or bob on the index page"
	@echo "make run-nginx  gunicorn behind nginx (nginx.conf): http://127.0.0.1:8080, https://127.0.0.1:8443 (HTTP/2)"
	@echo "make run-redis  a local redis-server and gunicorn with 4 workers on it"
	@echo "make run-cluster  a local 3-primary Redis Cluster (ports 7001-7003) and gunicorn with 4 workers on it"
	@echo "make bench      benchmarks vs Nchan and Flask-SocketIO (bench-quick: under a minute)"
	@echo "make test       install everything the tests need, then run them all"
	@echo "make test-fast  the same, skipping the long soak tests"
	@echo "make lint       ruff and mypy (pyproject.toml) over the code held to them"
	@echo "make translations  extract the pages' messages, update translations/ko, compile the .mo"

$(VENV)/.run-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements-dev.txt
	touch $(VENV)/.run-installed $@

run: $(VENV)/.run-installed
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# The demo with access control on (README "Try access control"): a new random HS256 key per
# start (so tokens and cookies of an earlier start stop working), the index page's demo
# sign-in for alice and bob, and anonymous visitors who may read chat and ticks but must
# sign in to post. Each variable can be set beforehand to override it (a fixed
# SWITCHBOARD_AUTH_SECRET keeps the cookies across restarts).
run-auth: $(VENV)/.run-installed
	@secret="$${SWITCHBOARD_AUTH_SECRET:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(48))')}"; \
	  echo "Switchboard with access control on http://127.0.0.1:$${PORT:-8000}/: sign in on the index page (Ctrl-C stops)"; \
	  SWITCHBOARD_AUTH_SECRET="$$secret" \
	  SWITCHBOARD_DEMO_USERS="$${SWITCHBOARD_DEMO_USERS-alice,bob}" \
	  SWITCHBOARD_ANONYMOUS_SUBSCRIBE="$${SWITCHBOARD_ANONYMOUS_SUBSCRIBE-chat,ticks}" \
	  SWITCHBOARD_ANONYMOUS_PUBLISH="$${SWITCHBOARD_ANONYMOUS_PUBLISH-}" \
	  exec $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# gunicorn on :8000 behind nginx: plain HTTP/1.1 on :8080 and TLS with HTTP/2 on :8443.
# nginx runs .run/nginx/nginx-tls.conf: the repo's nginx.conf with its "#tls " lines turned
# on, and the certificate paths made absolute (nginx reads them relative to the config
# file's folder, which for this copy is .run/nginx/). Ctrl-C stops both.
run-nginx: $(VENV)/.run-installed $(TLS_DIR)/cert.pem
	@test -x "$(NGINX)" || { echo "run-nginx needs nginx (Debian: apt-get install nginx)"; exit 1; }
	@mkdir -p .run/nginx
	@sed -e 's/^\([[:space:]]*\)#tls /\1/' \
	  -e 's|\.run/nginx/tls/|$(CURDIR)/$(TLS_DIR)/|' nginx.conf > .run/nginx/nginx-tls.conf
	@trap 'kill 0' INT TERM EXIT; \
	  SWITCHBOARD_BEHIND_PROXY=1 $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app & \
	  "$(NGINX)" -p "$(CURDIR)" -c .run/nginx/nginx-tls.conf -g 'daemon off;' & \
	  echo "Switchboard behind nginx: http://127.0.0.1:8080/ (HTTP/1.1) and https://127.0.0.1:8443/ (HTTP/2," \
	       "self-signed certificate: accept the browser's warning once). Ctrl-C stops gunicorn and nginx."; \
	  wait

# A self-signed certificate for 127.0.0.1 and localhost, made once (browsers warn about it;
# a real deployment points nginx.conf's ssl_certificate lines at a real one).
$(TLS_DIR)/cert.pem:
	@command -v openssl >/dev/null || { echo "run-nginx needs openssl (Debian: apt-get install openssl)"; exit 1; }
	@mkdir -p $(TLS_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
	  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
	  -keyout $(TLS_DIR)/key.pem -out $@

# gunicorn with 4 workers sharing one hub through Redis: a redis-server started here (data
# and Unix socket under .run/redis, nothing kept), or the one SWITCHBOARD_REDIS_URL names.
# Ctrl-C stops both.
run-redis: $(VENV)/.run-installed
	@if [ -n "$$SWITCHBOARD_REDIS_URL" ]; then \
	  echo "Switchboard on http://127.0.0.1:$${PORT:-8000}/ with 4 workers on $$SWITCHBOARD_REDIS_URL (Ctrl-C stops)"; \
	  exec env WEB_CONCURRENCY=4 $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app; \
	fi; \
	command -v redis-server >/dev/null 2>&1 || { echo "run-redis needs redis-server (Debian: apt-get install redis-server) or SWITCHBOARD_REDIS_URL"; exit 1; }; \
	mkdir -p .run/redis; sock="$(CURDIR)/.run/redis/redis.sock"; rm -f "$$sock"; \
	redis-server --port 0 --unixsocket "$$sock" --unixsocketperm 700 --dir "$(CURDIR)/.run/redis" \
	  --save '' --appendonly no --logfile redis.log --daemonize no & \
	redis=$$!; trap 'kill $$redis 2>/dev/null; wait $$redis 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	for i in $$(seq 50); do [ -S "$$sock" ] && break; sleep 0.1; done; \
	[ -S "$$sock" ] || { echo "redis-server did not start; see .run/redis/redis.log"; exit 1; }; \
	echo "Switchboard on http://127.0.0.1:$${PORT:-8000}/ with 4 workers on Redis at unix://$$sock (Ctrl-C stops both)"; \
	SWITCHBOARD_REDIS_URL="unix://$$sock" WEB_CONCURRENCY=4 $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# gunicorn with 4 workers on a local Redis Cluster of three primaries (no replicas) on
# loopback ports $(CLUSTER_PORTS) (cluster bus: each port + 10000). Each node's data and
# nodes.conf live under .run/cluster/<port>, wiped at start and at exit: nothing is kept.
# Ctrl-C stops everything.
CLUSTER_PORTS ?= 7001 7002 7003
run-cluster: $(VENV)/.run-installed
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || \
	  { echo "run-cluster needs redis-server and redis-cli 7 or newer (Debian: apt-get install redis-server)"; exit 1; }
	@rm -rf .run/cluster; pids=""; \
	trap 'kill $$pids 2>/dev/null; wait $$pids 2>/dev/null; rm -rf "$(CURDIR)/.run/cluster"' EXIT; trap 'exit 130' INT TERM; \
	for port in $(CLUSTER_PORTS); do \
	  mkdir -p .run/cluster/$$port; \
	  redis-server --port $$port --bind 127.0.0.1 --dir "$(CURDIR)/.run/cluster/$$port" --save '' --appendonly no \
	    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
	    --cluster-require-full-coverage no --logfile redis.log --daemonize no & \
	  pids="$$pids $$!"; \
	done; \
	for port in $(CLUSTER_PORTS); do \
	  for i in $$(seq 50); do redis-cli -p $$port ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	done; \
	redis-cli --cluster create $(foreach port,$(CLUSTER_PORTS),127.0.0.1:$(port)) --cluster-replicas 0 --cluster-yes >/dev/null \
	  || { echo "redis-cli --cluster create failed; see .run/cluster/*/redis.log"; exit 1; }; \
	for port in $(CLUSTER_PORTS); do \
	  for i in $$(seq 100); do redis-cli -p $$port cluster info | grep -q cluster_state:ok && break; sleep 0.1; done; \
	done; \
	first=$$(echo $(CLUSTER_PORTS) | cut -d' ' -f1); \
	echo "Switchboard on http://127.0.0.1:$${PORT:-8000}/ with 4 workers on a Redis Cluster at 127.0.0.1:{$$(echo $(CLUSTER_PORTS) | tr ' ' ,)} (Ctrl-C stops all)"; \
	SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$$first" SWITCHBOARD_REDIS_CLUSTER=1 WEB_CONCURRENCY=4 \
	  $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

# The pages' messages (templates, app/pages.py, app/js_messages.py) in one gettext catalog per
# language. `make translations`: extract them into $(POT), merge new and changed msgids into
# translations/ko/LC_MESSAGES/messages.po (translate the empty and fuzzy entries there), and
# compile messages.mo, which is committed so that `make run` needs no build step.
# tests/browser/test_i18n.py runs `make pot POT=<tmp>` to check the catalog is up to date.
PYBABEL := $(VENV)/bin/pybabel
POT ?= translations/messages.pot
BABEL_KEYWORDS := -k _l -k N_ -k NP_:1,2

pot:
	$(PYBABEL) -q extract -F babel.cfg $(BABEL_KEYWORDS) --no-wrap --sort-by-file \
	  --project=Switchboard --copyright-holder="Switchboard contributors" -o $(POT) .

translations: pot
	$(PYBABEL) -q update -i $(POT) -d translations --no-wrap --ignore-obsolete
	$(PYBABEL) compile -d translations --statistics

# Installs the missing programs with apt-get when root; otherwise names them and stops.
system-deps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	[ -n "$$(fc-list :lang=ko 2>/dev/null)" ] || missing="$$missing $(KOREAN_FONT)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "The tests need these Debian packages:$$missing"; \
	    echo "Install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# Third-party JavaScript clients the tests run under Node (eventsource, @stomp/stompjs, ...).
tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: tests/js/node_modules/.installed

# ruff (lint and format) over app/, tests/ and bench/, and mypy over the typed packages;
# settings in pyproject.toml.
LINT_PATHS := app tests bench wsgi.py gunicorn.conf.py
TYPED_PATHS := app/delivery app/hub app/server app/stomp app/transports/ws_protocol.py app/transports/stomp_delivery.py

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy $(TYPED_PATHS)

# The suite runs in two parts: everything but the soak tests on TEST_JOBS processes
# (pytest-xdist; a test file stays on one process, so its module fixtures start once), then
# the soak tests one at a time, alone, because they measure a loaded server (shutdown under
# load, memory, churn). Exit status 5 is "no test selected" (PYTEST_ARGS chose none of them).
TEST_JOBS ?= 2
PYTEST_PARALLEL = $(PY) -m pytest -n $(TEST_JOBS) --dist loadfile

test: system-deps $(VENV)/.dev-installed node-deps lint
	$(PYTEST_PARALLEL) -m "not soak" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -m soak $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: system-deps $(VENV)/.dev-installed node-deps lint
	$(PYTEST_PARALLEL) -m "not soak" $(PYTEST_ARGS)

# Benchmarks (bench/README.md): Switchboard vs Nchan vs Flask-SocketIO, server on core 0,
# load on core 1. Installs what it needs: nginx + Debian's nchan module + redis-server
# (apt-get, when root) and bench/.venv (bench/requirements.txt), never into the app's venv.
# bench: median of 3 runs (about 15 min); bench-quick: 1 run, smaller N (under a minute).
bench bench-quick: $(VENV)/.run-installed
	@if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing nginx libnginx-mod-nchan redis-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan redis-server >/dev/null; \
	  else echo "not root: the Nchan anchor needs 'apt-get install libnginx-mod-nchan' (skipped without it)"; fi; \
	fi
	@test -x bench/.venv/bin/python || $(PYTHON) -m venv bench/.venv
	@cmp -s bench/requirements.txt bench/.venv/.requirements || { \
	  bench/.venv/bin/python -m pip --disable-pip-version-check -q install -r bench/requirements.txt && \
	  cp bench/requirements.txt bench/.venv/.requirements; }
	bench/.venv/bin/python bench/run.py $(if $(filter bench-quick,$@),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .run
