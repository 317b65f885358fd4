"""The benchmark's workloads count as intended: in every protocol mode measured against the echo
server, a socket's join message seen both ways (sent, then echoed as the server's) puts it in
one topic, and its data messages both ways change nothing and raise nothing."""

from __future__ import annotations

import pytest
from wsgauge_sidecar.httpwire import RequestHead, ResponseHead
from wsgauge_sidecar.protocols.registry import PROTOCOLS

from benchmarks.loadgen import ECHO_PROTOCOL_MODES, MODES, TOPICS, Workload


@pytest.mark.parametrize("mode", ECHO_PROTOCOL_MODES)
@pytest.mark.parametrize("index", [0, 3, TOPICS + 1])
def test_the_join_echo_subscribes_and_data_messages_change_nothing(mode: str, index: int) -> None:
    workload = Workload(mode, payload_bytes=32)
    request = RequestHead("GET", workload.target(index), "HTTP/1.1", [])
    response = ResponseHead("HTTP/1.1", 101, "Switching Protocols", [])
    session = PROTOCOLS[mode].factory(request, response)
    client, server = (
        (session.client_binary, session.server_binary)
        if workload.binary
        else (session.client_text, session.server_text)
    )
    join = workload.join_message(index)
    assert join is not None
    client(join)
    server(join)
    topics = session.topics
    assert len(topics) == 1, topics
    assert f"room{index % TOPICS}" in next(iter(topics))
    for _ in range(3):
        assert not client(workload.message(index))
        assert not server(workload.message(index))
    assert session.topics == topics


def test_every_protocol_rule_has_a_mode() -> None:
    # (supabase is the Phoenix reader, measured by the phoenix mode; auto picks one of these)
    assert set(PROTOCOLS) <= set(MODES)
