"""Frame protocols: pure, sans-I/O readers of the messages of one WebSocket.

A ``--topic`` rule that takes topics from the WebSocket messages (rather than
from the upgrade request) names a protocol in :data:`registry.PROTOCOLS`. The
relay creates one session per socket with the protocol's factory and feeds it
every reassembled message of both directions; the session answers with
:class:`base.Joined` / :class:`base.Left` events.

* :mod:`.base`: the session interface, the events and topic-name bounds;
* :mod:`.registry`: rule name -> :class:`registry.ProtocolSpec` (factory, help);
* one module per protocol (:mod:`.phoenix`, ...).
"""
