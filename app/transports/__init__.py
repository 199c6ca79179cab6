"""The five ways a browser hears the server, each a thin adapter over the hub.

Every module here exposes ``init_app(app)``, which registers its routes. Order does not
matter; ``create_app`` calls them all.
"""

from . import longpoll, polling, sse, stomp_ws, websocket

TRANSPORTS = (polling, longpoll, sse, websocket, stomp_ws)
