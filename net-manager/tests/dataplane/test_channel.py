"""channel.py: every message survives the wire; framing copes with how streams arrive."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from net_manager.dataplane.channel import (
    MESSAGES,
    ChannelClosed,
    ChannelEndpoint,
    ChannelError,
    Counters,
    FrameDecoder,
    Ready,
    Resolve,
    Resolved,
    Snapshot,
    Stop,
    Used,
    decode_body,
    encode,
)
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry

X1, X3 = "X.default.X1.default", "X.default.X3.default"
CLIENT = Endpoint(X1, 0, "10.18.0.2", "fc00::2", "10.30.0.2", "fdff::2", "198.18.0.1", 50103)
SERVER = Endpoint(X3, 0, "10.18.0.66", "", "10.30.0.6", "", "198.18.0.2", 50103)
RR = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (SERVER,))

MESSAGE_EXAMPLES = [
    Snapshot.of([RR], [CLIENT], "198.18.0.1"),
    Snapshot.of([], [], "198.18.0.1"),
    Resolved("10.30.1.30", True),
    Resolved("fdff:2000::1e", False),
    Stop(),
    Ready(port=50103, pid=4242),
    Resolve("10.30.1.31"),
    Used((X1, X3)),
    Counters({"packets_out": 12, "flows": 1}, {"198.18.0.2": 0.00042}),
]


def frames(*messages) -> bytes:
    return b"".join(encode(m) for m in messages)


def drain(decoder: FrameDecoder) -> list:
    out = []
    while (message := decoder.pop()) is not None:
        out.append(message)
    return out


@pytest.mark.parametrize("message", MESSAGE_EXAMPLES, ids=lambda m: m.TYPE)
def test_every_message_round_trips(message) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(message))
    assert drain(decoder) == [message]


def test_every_message_type_has_an_example() -> None:
    assert {m.TYPE for m in MESSAGE_EXAMPLES} == set(MESSAGES)


def test_snapshot_gives_back_the_table_entries() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(Snapshot.of([RR], [CLIENT], "198.18.0.1")))
    (message,) = drain(decoder)
    assert message.entries() == ([RR], [CLIENT]) and message.node_ip == "198.18.0.1"


def test_a_frame_arriving_byte_by_byte() -> None:
    decoder = FrameDecoder()
    data = encode(MESSAGE_EXAMPLES[0])
    for i in range(len(data) - 1):
        decoder.feed(data[i : i + 1])
        assert decoder.pop() is None
    decoder.feed(data[-1:])
    assert drain(decoder) == [MESSAGE_EXAMPLES[0]]


def test_several_messages_in_one_read_and_a_split_one() -> None:
    data = frames(*MESSAGE_EXAMPLES)
    decoder = FrameDecoder()
    decoder.feed(data[:-7])
    first = drain(decoder)
    decoder.feed(data[-7:])
    assert first + drain(decoder) == MESSAGE_EXAMPLES


@pytest.mark.parametrize(
    "body, complaint",
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "reboot"}', "unknown message type"),
        (b'{"type": "resolve"}', "service_ip must be a string"),
        (b'{"type": "resolved", "service_ip": "10.30.1.30", "found": "yes"}', "found"),
        (b'{"type": "used", "job_names": [1]}', "job_names"),
        (b'{"type": "counters", "values": {"a": "b"}}', "values"),
        (b'{"type": "ready", "port": "50103"}', "port"),
        (b'{"type": "snapshot", "services": {}, "local_instances": [], "node_ip": "x"}', "list"),
        (
            b'{"type": "snapshot", "services": [{"service_ip": "10.30.1.30"}],'
            b' "local_instances": [], "node_ip": "198.18.0.1"}',
            "service_ip_v6",
        ),
        (
            b'{"type": "snapshot", "services": [], "local_instances": [{"job_name": "a"}],'
            b' "node_ip": "198.18.0.1"}',
            "local instance: instance_number",
        ),
    ],
)
def test_a_garbage_frame_is_an_error_and_the_stream_goes_on(body: bytes, complaint: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", len(body)) + body + encode(Stop()))
    with pytest.raises(ChannelError, match=complaint):
        decoder.pop()
    assert drain(decoder) == [Stop()]


def test_an_impossible_length_breaks_the_stream_for_good() -> None:
    decoder = FrameDecoder(max_frame=1000)
    decoder.feed(struct.pack("!I", 1001) + encode(Stop()))
    for _ in range(2):
        with pytest.raises(ChannelError, match="exceeds 1000"):
            decoder.pop()
    assert decoder.broken


def test_decode_body_accepts_what_encode_wrote() -> None:
    frame = encode(Used(("a.b.c.d",)))
    assert decode_body(frame[4:]) == Used(("a.b.c.d",))
    assert json.loads(frame[4:]) == {"type": "used", "job_names": ["a.b.c.d"]}


# ---------------------------------------------------------------- the non-blocking endpoint


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ChannelEndpoint(ours, max_pending=64 * 1024), theirs
    ours.close()
    theirs.close()


def test_endpoint_receives_what_is_there_and_skips_bad_frames(pair) -> None:
    endpoint, theirs = pair
    assert endpoint.receive() == []
    theirs.sendall(frames(Stop()) + struct.pack("!I", 3) + b"bad" + frames(Resolved("x", True)))
    assert endpoint.receive() == [Stop(), Resolved("x", True)]
    assert len(endpoint.errors) == 1 and "not JSON" in endpoint.errors[0]


def test_endpoint_reports_the_peer_closing(pair) -> None:
    endpoint, theirs = pair
    theirs.close()
    with pytest.raises(ChannelClosed):
        endpoint.receive()


def test_endpoint_send_never_blocks_and_drops_when_the_peer_does_not_read(pair) -> None:
    endpoint, theirs = pair
    big = Used(tuple(f"app.ns.svc{i}.ns" for i in range(2000)))  # ~40 KB per frame
    sent = [endpoint.send(big) for _ in range(50)]
    assert not all(sent) and endpoint.dropped == sent.count(False)
    decoder = FrameDecoder()
    theirs.setblocking(False)
    received = []
    while len(received) < sent.count(True):
        try:
            decoder.feed(theirs.recv(1 << 20))
        except BlockingIOError:
            endpoint.flush()
        received += drain(decoder)
    assert received == [big] * sent.count(True)
