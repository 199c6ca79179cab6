"""Placeholder: this transport lands in its own issue."""


def init_app(app):
    """Register nothing yet."""
