"""wsgauge sidecar: a reverse proxy that counts live WebSocket connections per topic.

The pure, I/O-free cores (topic rules, counter, HTTP/1.1 and WebSocket framing, the
HTTP exchange of a data-port connection, the Phoenix channels reader) live beside the
asyncio layer that holds the sockets (``proxy``, ``relay``, ``admin``, ``drain``).
"""

__version__ = "0.1.0"
