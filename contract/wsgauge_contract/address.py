"""``HOST:PORT``: the one parser and formatter of TCP addresses for the sidecar and the operator.

Every flag, environment variable and annotation that names a TCP address (``--listen``,
``--admin-listen``, ``--upstream``, ``--metrics-api-listen``, ``--keda-listen``, the injector's
``--listen`` and ``wsgauge.dev/upstream``) is read by :meth:`Address.parse` and its two
shorthands, so they all accept and refuse the same texts:

- ``HOST:PORT`` with a host name or an IPv4 address: ``0.0.0.0:8080``, ``app:8081``;
- ``[V6]:PORT`` with an IPv6 address in brackets: ``[::]:8080``, ``[fe80::1%eth0]:80``. An IPv6
  address without brackets (``::1:8080``) is refused: which colon starts the port is a guess;
- ``:PORT`` (empty host): all interfaces (``0.0.0.0``) for an address to listen on
  (:meth:`Address.parse_listen`), the loopback (``127.0.0.1``) for an address to connect to
  (:meth:`Address.parse_connect`); :meth:`Address.parse` without a default refuses it;
- ``PORT`` is a number from 0 to 65535 (0: any free port, for listening only; an address to
  connect to needs 1 to 65535). Surrounding whitespace is ignored.

The host is kept without brackets (as sockets and aiohttp want it); ``str(address)`` puts them
back for IPv6, so that formatting and parsing round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsgauge_contract.exceptions import AddressError

ANY_HOST = "0.0.0.0"
"""The host of ``:PORT`` when listening: every IPv4 interface."""

LOOPBACK_HOST = "127.0.0.1"
"""The host of ``:PORT`` when connecting: this machine (or pod)."""

MAX_PORT = 65535
"""The largest TCP port."""


@dataclass(frozen=True)
class Address:
    """A TCP ``HOST:PORT`` to listen on or connect to."""

    host: str = LOOPBACK_HOST
    """Host name or IP address (IPv6 without brackets)."""
    port: int = 0
    """TCP port (0 = any free port when listening)."""

    def __str__(self) -> str:
        return f"{self.url_host}:{self.port}"

    @property
    def url_host(self) -> str:
        """The host as written in a URL or ``HOST:PORT``: IPv6 in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @classmethod
    def parse(cls, text: str, default_host: str | None = None) -> Address:
        """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (host ``default_host``; refused if None).

        Raises :class:`~wsgauge_contract.exceptions.AddressError` for anything else.
        """
        value = text.strip()
        if value.startswith("[") and "]:" not in value:
            raise AddressError(f"expected [IPV6]:PORT, got {text!r}")
        host, separator, port_text = value.rpartition(":")
        if not separator:
            raise AddressError(f"expected HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if ":" not in host:
                raise AddressError(f"brackets are for IPv6 addresses only, got {text!r}")
        elif ":" in host:
            raise AddressError(f"IPv6 addresses need brackets: [ADDRESS]:PORT, got {text!r}")
        if any(character in host for character in "[] \t/"):
            raise AddressError(f"not a host name or IP address in {text!r}")
        if not host:
            if default_host is None:
                raise AddressError(f"expected HOST:PORT, got {text!r} (no host)")
            host = default_host
        if not port_text.isdigit() or not 0 <= int(port_text) <= MAX_PORT:
            raise AddressError(f"port must be a number from 0 to {MAX_PORT}, got {port_text!r}")
        return cls(host=host, port=int(port_text))

    @classmethod
    def parse_listen(cls, text: str) -> Address:
        """An address to listen on: ``:PORT`` means every interface, port 0 any free port."""
        return cls.parse(text, default_host=ANY_HOST)

    @classmethod
    def parse_connect(cls, text: str) -> Address:
        """An address to connect to: ``:PORT`` means the loopback; the port is 1 to 65535."""
        address = cls.parse(text, default_host=LOOPBACK_HOST)
        if address.port == 0:
            raise AddressError(f"port must be a number from 1 to {MAX_PORT}, got 0 in {text!r}")
        return address
