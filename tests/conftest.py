"""Fixtures shared by the whole suite: real servers on free ports, cleaned up after use."""

from __future__ import annotations

import pytest
import requests

from tests.support.servers import Gunicorn


@pytest.fixture
def start_server(tmp_path_factory):
    """Factory: ``start_server(**env)`` starts a gunicorn with those settings; all are stopped after the test."""
    servers: list[Gunicorn] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def start(env: dict[str, str] | None = None, **kwargs) -> Gunicorn:
        server = Gunicorn(log_dir, env=env, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn with default settings, shared by a test module."""
    with Gunicorn(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def http():
    """A requests session (its own cookie jar, so its own sender identity)."""
    with requests.Session() as session:
        yield session
