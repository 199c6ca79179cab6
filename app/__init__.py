"""Switchboard: one event hub, five ways for a browser to hear a server.

``import app`` stays light on purpose: the STOMP core (``app.stomp``) is sans-I/O
and must be importable without Flask, gevent or sockets, so the web stack is only
imported when ``create_app`` is called.
"""


def create_app(test_config=None):
    """Build the Flask application with its hub, transports and pages.

    Args:
        test_config: optional mapping of setting names (see ``app.config.Settings``)
            to values; it overrides the environment, for tests.

    Returns:
        The configured ``flask.Flask`` instance.

    Raises:
        app.config.ConfigError: a setting is invalid; the message names the variable.
    """
    from .factory import build_app

    return build_app(test_config)
