"""Access to the objects ``create_app`` built, from inside a request."""

from __future__ import annotations

from flask import current_app

from .config import Settings
from .delivery import Delivery
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


def delivery() -> Delivery:
    """The application's delivery layer (the worker's fan-out)."""
    return current_app.extensions["switchboard.delivery"]
