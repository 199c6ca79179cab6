"""The Redis backend, one job per module:

========================  ================================================================
``backend.py``            :class:`RedisBackend`, the hub's backend: history, locks, claims
``presence.py``           its presence methods (entries per process, join/leave appends)
``scripts.py``            the Lua scripts, one atomic operation on one topic's slot each
``keys.py``               key and channel names, hash tags and slots
``client.py``             commands on one server, behind Sentinel or on a cluster; failures
``feed.py``               one Pub/Sub connection, its topics' SUBSCRIBEs, catch-up after a cut
``router.py``             which feed (shard) carries which topic; cluster topology changes
========================  ================================================================
"""

from .backend import RedisBackend, encode_body
from .client import NotAcknowledged, RedisTarget

_encode_body = encode_body  # the name the contract tests use

__all__ = ["RedisBackend", "RedisTarget", "NotAcknowledged", "encode_body"]
