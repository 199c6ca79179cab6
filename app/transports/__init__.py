"""The five ways a browser hears the server, each a thin adapter over the hub.

Every module here exposes ``init_app(app)``, which registers its routes. Order does not
matter; ``create_app`` calls them all.
"""

from . import longpoll, polling, sockjs_mounts, sse, stomp_ws, websocket

# sockjs_mounts after stomp_ws: its STOMP mount shares that broker.
TRANSPORTS = (polling, longpoll, sse, websocket, stomp_ws, sockjs_mounts)
