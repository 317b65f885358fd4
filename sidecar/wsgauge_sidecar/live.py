"""What the sidecar's ``/stats/ws`` pushes and answers: its own stats document.

:class:`LocalLiveSource` is the :class:`~wsgauge_contract.live_session.LiveSource` of the
admin port: the push is ``{"type": "local", "stats": <stats document>}`` (the document of
``GET /stats``), sent on connect and after every change of :attr:`SidecarState.changes`;
``{"get": "local"}`` is answered with the same message and the request's ``id``. Nothing a
client sends changes the sidecar's state (the admin port's loopback rule for changes is
therefore met by construction).
"""

from __future__ import annotations

from typing import Any

from wsgauge_contract.live import (
    GET_LOCAL,
    SIDECAR_GETS,
    LiveRequest,
    LiveRequestError,
    local_message,
)

from wsgauge_sidecar.state import SidecarState


class LocalLiveSource:
    """The live source of one client on the admin port."""

    allowed = SIDECAR_GETS

    def __init__(self, state: SidecarState) -> None:
        self._state = state
        self._seen = state.seq

    def push(self) -> dict[str, Any]:
        """The latest stats document."""
        return local_message(self._state.document().to_json_dict())

    def answer(self, request: LiveRequest) -> dict[str, Any]:
        """``{"get": "local"}``: the latest stats document, with the request's id."""
        if request.get != GET_LOCAL:  # parse_request already refuses it; kept for safety
            raise LiveRequestError(f"unknown get {request.get!r}", request.request_id)
        return local_message(self._state.document().to_json_dict(), request.request_id)

    async def wait_change(self) -> None:
        """Return once the document's ``seq`` moved past the one seen at the last return."""
        while True:
            event = self._state.changes.current()
            if self._state.seq != self._seen:
                self._seen = self._state.seq
                return
            await event.wait()
