"""Access to the objects ``create_app`` built, from inside a request."""

from __future__ import annotations

from flask import current_app

from .config import Settings
from .hub import Hub
from .metrics import Metrics


def hub() -> Hub:
    """The application's hub."""
    return current_app.extensions["switchboard.hub"]


def settings() -> Settings:
    """The application's settings."""
    return current_app.extensions["switchboard.settings"]


def metrics() -> Metrics:
    """The application's metrics."""
    return current_app.extensions["switchboard.metrics"]
