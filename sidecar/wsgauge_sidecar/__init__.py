"""wsgauge sidecar: a reverse proxy that counts live WebSocket connections per topic.

The pure, I/O-free cores (topic rules, counter, HTTP/1.1 and WebSocket framing, the
HTTP exchange of a data-port connection, the Phoenix channels reader) live beside the
asyncio layer that holds the sockets (``proxy``, ``relay``, ``admin``, ``drain``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsgauge-sidecar")
    """The installed distribution's version (written once, in the repository's VERSION file)."""
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
