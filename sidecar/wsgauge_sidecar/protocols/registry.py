"""The frame protocols by ``--topic`` rule name.

Each protocol module defines one :class:`~wsgauge_sidecar.protocols.base.ProtocolSpec`
named ``SPEC``; listing it here makes its name a valid ``--topic`` rule, puts its
summary in ``--help`` and lets the relay create its sessions. Nothing else in
the sidecar names a protocol.
"""

from __future__ import annotations

from wsgauge_sidecar.protocols import (
    actioncable,
    centrifugo,
    graphql,
    mqtt,
    phoenix,
    pusher,
    socketio,
    stomp,
)
from wsgauge_sidecar.protocols.base import ProtocolSpec

PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec
    for spec in (
        phoenix.SPEC,
        graphql.SPEC,
        mqtt.SPEC,
        stomp.SPEC,
        pusher.SPEC,
        socketio.SPEC,
        actioncable.SPEC,
        centrifugo.SPEC,
    )
}
"""Rule name -> protocol, in ``--help`` order."""


def protocol_spec(name: str) -> ProtocolSpec | None:
    """The protocol named ``name``, or ``None`` when it is not a frame protocol."""
    return PROTOCOLS.get(name)


def rules_help() -> str:
    """The ``--help`` lines of the frame protocols (name, then summary)."""
    lines: list[str] = []
    for spec in PROTOCOLS.values():
        first, *rest = spec.summary.splitlines() or [""]
        lines.append(f"  {spec.name:<15} {first}".rstrip())
        lines.extend(f"  {'':<15} {line}".rstrip() for line in rest)
    return "\n".join(lines)
