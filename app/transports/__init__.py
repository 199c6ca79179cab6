"""The five ways a browser hears the server, each a thin adapter over the hub.

Every module here exposes ``init_app(app, services)``, which registers its routes (and
hands what it builds at start-up the services it needs: app/services.py) and returns the
WebSocket paths it serves, each with its sub-protocols (for the server's policy).
``create_app`` calls them all.
"""

from . import longpoll, polling, sockjs_mounts, sse, stomp_ws, websocket

# stomp_ws before sockjs_mounts: their shutdown steps run in this order (/stomp's sessions first).
TRANSPORTS = (polling, longpoll, sse, websocket, stomp_ws, sockjs_mounts)
