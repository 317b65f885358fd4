"""The protocols' message filters (``MessageFilter``, what the native relay hands Python) never
drop a message their sessions would act on.

For each protocol with a selective filter, two sessions follow the same random conversation:
one is given every message (its own pre-filter decides, as in the Python relay), the other only
the messages passing its current ``message_filter`` (as the native relay does once Python has
acknowledged; before that the wider spec filter applies, which passes more). Both must report
the same events, raise the same errors and end in the same topics; and each session's filter
stays within its spec's wide filter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsgauge_sidecar.exceptions import ProtocolError
from wsgauge_sidecar.protocols import actioncable, centrifugo, graphql, phoenix, pusher, socketio
from wsgauge_sidecar.protocols.base import ProtocolSession, ProtocolSpec
from wsgauge_sidecar.protocols.prefilter import EVERY, MessageFilter, MessageTest

Message = tuple[bool, bool, bytes]
"""(from the client, binary, payload)."""

ERROR = "error"
"""What :func:`feed` answers (with the close code after it) when the session raises."""

AC_ID = '{\\"channel\\":\\"Chat\\",\\"room\\":\\"R\\"}'
CORPUS: dict[str, tuple[ProtocolSpec, Callable[[], ProtocolSession], list[Message]]] = {
    "phoenix": (
        phoenix.SPEC,
        phoenix.PhoenixSession,
        [
            (True, False, b'["1","1","room:a","phx_join",{}]'),
            (True, False, b'["2","2","room:b","phx_join",{}]'),
            (True, False, b'["1","3","room:a","phx_leave",{}]'),
            (True, False, b'["1","4","room:a","msg",{"body":"x"}]'),
            (True, False, b'{"topic":"room:a","event":"phx_join","payload":{},"ref":"5"}'),
            (False, False, b'["1","1","room:a","phx_reply",{"status":"ok","response":{}}]'),
            (False, False, b'["2","2","room:b","phx_reply",{"status":"ok","response":{}}]'),
            (False, False, b'["2","2","room:b","phx_reply",{"status":"error","response":{}}]'),
            (False, False, b'["1","1","room:a","phx_close",{}]'),
            (False, False, b'["2","2","room:b","phx_error",{}]'),
            (False, False, b'[null,null,"room:a","msg",{"body":"x"}]'),
            (False, False, b'[null,"9","phoenix","phx_reply",{"status":"ok","response":{}}]'),
            (False, False, b'{"topic":"room:a","event":"phx_reply","payload":{"status":"ok"},'
                           b'"ref":"5"}'),
            (False, False, b'["1","1","room:\\u0061","phx_reply",{"status":"ok"}]'),
            (False, False, b"phx_close but not JSON"),
            (True, True, b"\x00\x01\x01\x06\x03" + b"11room:amsg" + b"{}"),
            (False, True, b"\x02\x06\x03room:amsg{}"),
            (False, True, b"\x01\x01\x01\x06\x02" + b"11room:aok"),
        ],
    ),
    "graphql": (
        graphql.SPEC,
        lambda: graphql.GraphQLSession("graphql-transport-ws"),
        [
            (True, False, b'{"id":"1","type":"subscribe","payload":{"query":"subscription{t}"}}'),
            (True, False, b'{"id":"2","type":"subscribe","payload":{"query":"subscription S{a}"}}'),
            (True, False, b'{"id":"1","type":"complete"}'),
            (True, False, b'{"type":"ping"}'),
            (False, False, b'{"id":"1","type":"next","payload":{"data":{"tick":1}}}'),
            (False, False, b'{"id":"2","type":"error","payload":[]}'),
            (False, False, b'{"id":"1","type":"complete"}'),
            (False, False, b"complete, not JSON"),
        ],
    ),
    "pusher": (
        pusher.SPEC,
        pusher.PusherSession,
        [
            (False, False, b'{"event":"pusher_internal:subscription_succeeded","channel":"a",'
                           b'"data":"{}"}'),
            (True, False, b'{"event":"pusher:unsubscribe","data":{"channel":"a"}}'),
            (True, False, b'{"event":"client-msg","channel":"a","data":{}}'),
            (False, False, b'{"event":"msg","channel":"a","data":"{}"}'),
            (True, False, b"pusher:unsubscribe, not JSON"),
        ],
    ),
    "actioncable": (
        actioncable.SPEC,
        actioncable.ActionCableSession,
        [
            (True, False, b'{"command":"subscribe","identifier":"' + AC_ID.encode() + b'"}'),
            (True, False, b'{"command":"unsubscribe","identifier":"' + AC_ID.encode() + b'"}'),
            (False, False, b'{"type":"confirm_subscription","identifier":"' + AC_ID.encode()
                           + b'"}'),
            (False, False, b'{"type":"reject_subscription","identifier":"' + AC_ID.encode()
                           + b'"}'),
            (False, False, b'{"type":"ping","message":1}'),
            (False, False, b'{"identifier":"' + AC_ID.encode() + b'","message":{}}'),
        ],
    ),
    "centrifugo": (
        centrifugo.SPEC,
        centrifugo.CentrifugoSession,
        [
            (True, False, b'{"id":1,"subscribe":{"channel":"a"}}'),
            (True, False, b'{"id":2,"unsubscribe":{"channel":"a"}}'),
            (False, False, b'{"id":1,"subscribe":{}}'),
            (False, False, b'{"id":1,"error":{"code":100,"message":"x"}}'),
            (False, False, b'{"push":{"channel":"a","pub":{"data":{}}}}'),
            (False, False, b'{"push":{"channel":"b","subscribe":{}}}'),
            (False, False, b'{"push":{"channel":"b","unsubscribe":{}}}'),
            (False, False, b'{"id":3,"connect":{"subs":{"c":{}}}}'),
            (False, False, b"{}"),
        ],
    ),
    "socketio": (
        socketio.SPEC,
        socketio.SocketIoSession,
        [
            (True, False, b"40"),
            (True, False, b"40/chat,"),
            (True, False, b'40/chat,{"token":1}'),
            (True, False, b"41/chat,"),
            (True, False, b'42["msg",1]'),
            (True, False, b'42/chat,7["msg"]'),
            (True, False, b"2probe"),
            (True, False, b"3"),
            (True, True, b"\x04attachment"),
            (False, False, b'0{"sid":"s","pingInterval":25000}'),
            (False, False, b'40{"sid":"a"}'),
            (False, False, b'40/chat,{"sid":"b"}'),
            (False, False, b'44/chat,{"message":"no"}'),
            (False, False, b"41/chat,"),
            (False, False, b'43/chat,7[]'),
            (False, False, b"2"),
            (False, False, b"1"),
            (False, False, b"4"),
            (False, False, b"47"),
            (False, False, b"9"),
            (False, False, b""),
            (False, False, b"40/chat,{bad"),
        ],
    ),
}  # fmt: skip


def feed(session: ProtocolSession, message: Message) -> Sequence[object]:
    from_client, binary, payload = message
    if from_client:
        handler = session.client_binary if binary else session.client_text
    else:
        handler = session.server_binary if binary else session.server_text
    try:
        return list(handler(payload))
    except ProtocolError as error:
        return [ERROR, error.close_code]


def passes_within(small: MessageTest, large: MessageTest) -> bool:
    """``large`` passes every message ``small`` passes: the same test, every message, or
    needles that include ``small``'s."""
    if small == large or large == EVERY:
        return True
    return isinstance(small, tuple) and isinstance(large, tuple) and set(small) <= set(large)


def within(narrow: MessageFilter, wide: MessageFilter) -> bool:
    """``wide`` passes at least every message ``narrow`` passes."""
    pairs = [
        (narrow.client_text, wide.client_text),
        (narrow.client_binary, wide.client_binary),
        (narrow.server_text, wide.server_text),
        (narrow.server_binary, wide.server_binary),
    ]
    return all(passes_within(small, large) for small, large in pairs)


@pytest.mark.parametrize("name", sorted(CORPUS))
@settings(max_examples=800, deadline=None)
@given(data=st.data())
def test_filtered_and_unfiltered_sessions_follow_the_same_topics(name: str, data: Any) -> None:
    spec, new_session, corpus = CORPUS[name]
    conversation = data.draw(st.lists(st.sampled_from(corpus), max_size=12))
    every, filtered = new_session(), new_session()
    for message in conversation:
        assert within(filtered.message_filter, spec.message_filter)
        from_client, binary, payload = message
        expected = feed(every, message)
        if filtered.message_filter.wants(payload, from_client=from_client, binary=binary):
            got = feed(filtered, message)
        else:
            got = []
        assert got == expected
        if ERROR in expected:
            return  # the socket is closed
        assert filtered.topics == every.topics
