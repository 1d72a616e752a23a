"""MqttClient against a real Mosquitto of our own (loopback, free port), plus its pure helpers."""

import json
import logging
import random
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from oakestra_net.mqtt import (
    MqttClient,
    MqttConfig,
    check_pattern,
    check_topic,
    payload_bytes,
    payload_preview,
    subscription_filter,
    topic_matches,
)
from testsupport import Broker, free_port, mosquitto_password_file, wait_until
from testsupport.pki import make_pki

pytestmark = pytest.mark.process  # real broker / server / subprocess


@pytest.fixture
def make_client():
    """Factory for MqttClients with fast reconnects; all are stopped at teardown."""
    clients = []

    def make(broker_or_port, *, start=True, workers=4, name="mqtt", queue_size=10000, **config):
        port = broker_or_port if isinstance(broker_or_port, int) else broker_or_port.port
        settings = {"min_reconnect_delay": 0.05, "max_reconnect_delay": 0.2, **config}
        cfg = MqttConfig("127.0.0.1", port, f"{name}-{len(clients)}", **settings)
        client = MqttClient(cfg, workers=workers, name=name, queue_size=queue_size)
        clients.append(client)
        if start:
            client.start()
        return client

    yield make
    for client in clients:
        client.stop()


class Inbox:
    """A handler that records (topic, payload, thread name) and can be waited on."""

    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def __call__(self, topic, payload):
        with self.lock:
            self.items.append((topic, payload, threading.current_thread().name))

    def payloads(self):
        with self.lock:
            return [payload for _topic, payload, _thread in self.items]

    def wait_count(self, count, timeout=5.0):
        return wait_until(lambda: len(self.items) >= count, timeout, message=f"{count} messages")


def mosquitto_pub(broker, topic, payload, qos=1, retain=False):
    subprocess.run(
        [
            "mosquitto_pub",
            *(["-r"] if retain else []),
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            str(qos),
            "-t",
            topic,
            "-m",
            payload,
        ],
        check=True,
        timeout=5,
    )


def subscribed(client, pattern, handler, **kwargs):
    client.subscribe(pattern, handler, **kwargs)
    assert client.wait_subscribed(pattern, 5), f"{pattern} not acknowledged"


# -- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("nodes/+/net/#", "nodes/n1/net/subnet", True),
        ("nodes/+/net/#", "nodes/n1/net/service/deployed", True),
        ("nodes/+/net/#", "nodes/n1/net", True),
        ("nodes/+/net/#", "nodes/n1/job", False),
        ("nodes/+/net/#", "nodes/net/subnet", False),
        ("jobs/+/updates_available", "jobs/a.b.c.d/updates_available", True),
        ("jobs/+/updates_available", "jobs/a/b/updates_available", False),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/+", "a/", True),
        ("+/+", "/x", True),
        ("#", "anything/at/all", True),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("$share/cluster-sm/nodes/+/net/#", "nodes/n1/net/subnet", True),
        ("$share/cluster-sm/nodes/+/net/#", "nodes/n1/other", False),
        ("$share/g/#", "x", True),
    ],
)
def test_topic_matches(pattern, topic, matches):
    assert topic_matches(pattern, topic) is matches


def test_subscription_filter_strips_the_share_group():
    assert subscription_filter("$share/cluster-sm/nodes/+/net/#") == "nodes/+/net/#"
    assert subscription_filter("nodes/+/net/#") == "nodes/+/net/#"


@pytest.mark.parametrize(
    "pattern", ["", "a/#/b", "a/b#", "a+/b", "$share/g", "$share//a", "$share/g+/a", "a/\0"]
)
def test_bad_patterns_are_rejected(pattern):
    with pytest.raises(ValueError, match="mqtt"):
        check_pattern(pattern)


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "x\0y", "t" * 70000])
def test_bad_publish_topics_are_rejected(topic):
    with pytest.raises(ValueError, match="mqtt topic"):
        check_topic(topic)


@dataclass(frozen=True)
class Message:
    job_name: str

    def to_json(self) -> str:
        return json.dumps({"job_name": self.job_name})


def test_payload_kinds():
    assert payload_bytes("héllo", "t") == "héllo".encode()
    assert payload_bytes(b"\x00\x01", "t") == b"\x00\x01"
    assert payload_bytes(bytearray(b"ab"), "t") == b"ab"
    assert payload_bytes(Message("a.b.c.d"), "t") == b'{"job_name": "a.b.c.d"}'
    with pytest.raises(TypeError, match="payload for jobs/x is dict"):
        payload_bytes({"not": "serialised"}, "jobs/x")


def test_payload_preview_is_at_most_200_chars():
    assert payload_preview(b"short") == "short"
    preview = payload_preview(b"x" * 1000)
    assert len(preview) == 200 and preview.endswith("...")
    assert payload_preview(b"\xff\xfe") == "\ufffd\ufffd"


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"host": ""}, "host"),
        ({"port": 0}, "port 0"),
        ({"port": "1883"}, "port '1883'"),
        ({"port": 70000}, "port 70000"),
        ({"keepalive": 0}, "keepalive"),
        ({"min_reconnect_delay": 5, "max_reconnect_delay": 1}, "reconnect delays"),
        ({"key_file": "/k.pem"}, "key_file"),
    ],
)
def test_bad_config_is_rejected(overrides, error):
    settings = {"host": "127.0.0.1", "port": 1883, "client_id": "c", **overrides}
    with pytest.raises(ValueError, match=error):
        MqttConfig(**settings)


def test_missing_tls_file_is_reported_at_construction(tmp_path):
    config = MqttConfig("127.0.0.1", 1883, "c", ca_file=str(tmp_path / "ca.crt"))
    with pytest.raises(ValueError, match="ca_file .*ca.crt does not exist"):
        MqttClient(config)


# -- against a real broker ------------------------------------------------------------------


def test_round_trip_qos1_both_directions(mosquitto, make_client, fail_on_log_exception):
    client = make_client(mosquitto)
    inbox = Inbox()
    subscribed(client, "nodes/+/net/#", inbox)
    mosquitto_pub(mosquitto, "nodes/n1/net/subnet", '{"METHOD": "GET"}')
    inbox.wait_count(1)
    assert inbox.items[0][:2] == ("nodes/n1/net/subnet", b'{"METHOD": "GET"}')

    sub = subprocess.Popen(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-d",
            "-h",
            mosquitto.host,
            "-p",
            str(mosquitto.port),
            "-q",
            "1",
            "-t",
            "jobs/+/updates_available",
            "-C",
            "1",
            "-W",
            "5",
            "-F",
            "MSG %t %p",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in sub.stdout:
            if "SUBACK" in line:
                break
        client.publish("jobs/a.b.c.d/updates_available", Message("a.b.c.d"))
        out, _ = sub.communicate(timeout=5)
    finally:
        sub.kill()
    received = [line for line in out.splitlines() if line.startswith("MSG ")]
    assert received == ['MSG jobs/a.b.c.d/updates_available {"job_name": "a.b.c.d"}']
    assert client.stats()["published"] == 1 and client.stats()["received"] == 1


def test_published_messages_are_not_retained(mosquitto, make_client):
    publisher = make_client(mosquitto, name="pub")
    echo = Inbox()
    subscribed(publisher, "jobs/#", echo)
    publisher.publish("jobs/x/updates_available", "first")
    echo.wait_count(1)  # the broker has handled it
    late = make_client(mosquitto, name="late", workers=1)
    inbox = Inbox()
    subscribed(late, "jobs/#", inbox)
    mosquitto_pub(mosquitto, "jobs/marker", "marker")
    inbox.wait_count(1)
    assert inbox.payloads() == [b"marker"]  # a retained message would have come first


def test_a_retained_poison_result_is_not_applied(mosquitto, make_client):
    """A result left retained before the node subscribes is dropped and counted, while the
    same payload sent live still arrives (so the drop is about the retain flag)."""
    topic = "nodes/n1/net/subnetwork/result"
    mosquitto_pub(mosquitto, topic, '{"address": "10.18.0.0"}', retain=True)
    node = make_client(mosquitto, name="node")
    inbox = Inbox()
    subscribed(node, topic, inbox)
    wait_until(lambda: node.stats()["retained_ignored"] == 1, message="retained seen")
    mosquitto_pub(mosquitto, topic, '{"address": "10.18.0.64"}')
    inbox.wait_count(1)
    assert inbox.payloads() == [b'{"address": "10.18.0.64"}']
    assert node.stats()["received"] == 2


def test_a_subscription_may_accept_retained_messages(mosquitto, make_client):
    mosquitto_pub(mosquitto, "jobs/x/updates_available", "kept", retain=True)
    client = make_client(mosquitto)
    inbox = Inbox()
    subscribed(client, "jobs/#", inbox, accept_retained=True)
    inbox.wait_count(1)
    assert inbox.payloads() == [b"kept"]
    assert client.stats()["retained_ignored"] == 0


def test_publish_rejects_bad_input(mosquitto, make_client):
    client = make_client(mosquitto)
    with pytest.raises(ValueError, match="wildcard"):
        client.publish("jobs/+/updates_available", "x")
    with pytest.raises(ValueError, match="qos 3"):
        client.publish("jobs/x", "x", qos=3)
    with pytest.raises(TypeError, match="payload for jobs/x"):
        client.publish("jobs/x", 42)
    with pytest.raises(ValueError, match="misplaced wildcard"):
        client.subscribe("a/#/b", print)
    with pytest.raises(TypeError, match="not callable"):
        client.subscribe("a/b", "print")


def test_raising_handler_is_logged_counted_and_delivery_goes_on(mosquitto, make_client, caplog):
    inbox = Inbox()

    def handler(topic, payload):
        if payload.startswith(b"boom"):
            raise RuntimeError("handler exploded")
        inbox(topic, payload)

    client = make_client(mosquitto, workers=1)
    subscribed(client, "t/#", handler)
    big = "boom" + "x" * 500
    with caplog.at_level(logging.ERROR):
        mosquitto_pub(mosquitto, "t/1", big)
        mosquitto_pub(mosquitto, "t/2", "fine")
        mosquitto_pub(mosquitto, "t/3", "also fine")
        inbox.wait_count(2)
    assert inbox.payloads() == [b"fine", b"also fine"]
    assert client.stats()["handler_errors"] == 1
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.getMessage() == "mqtt handler failed"
    assert record.fields["topic"] == "t/1"
    assert record.fields["payload"].startswith("boomxxx") and len(record.fields["payload"]) == 200
    assert "handler exploded" in str(record.exc_info[1])


def test_same_key_is_handled_in_order_across_workers(mosquitto, make_client):
    publisher = make_client(mosquitto, name="pub")
    consumer = make_client(mosquitto, name="sub", workers=4)
    seen = {"a": [], "b": []}
    threads = {"a": set(), "b": set()}

    def handler(topic, payload):
        key = topic.split("/")[1]
        if random.random() < 0.05:
            time.sleep(0.001)  # give a wrongly keyed worker the chance to overtake
        seen[key].append(int(payload))
        threads[key].add(threading.current_thread().name)

    subscribed(consumer, "jobs/+/+", handler, order_key=lambda topic: topic.split("/")[1])
    assert publisher.wait_connected(5)
    for seq in range(500):
        publisher.publish(f"jobs/a/{seq}", str(seq))
        publisher.publish(f"jobs/b/{seq}", str(seq))
    wait_until(lambda: len(seen["a"]) + len(seen["b"]) == 1000, timeout=10)
    assert seen["a"] == list(range(500))
    assert seen["b"] == list(range(500))
    assert len(threads["a"]) == 1 and len(threads["b"]) == 1


def test_default_order_key_is_the_topic(mosquitto, make_client):
    publisher = make_client(mosquitto, name="pub")
    consumer = make_client(mosquitto, name="sub", workers=4)
    seen = {}
    lock = threading.Lock()

    def handler(topic, payload):
        with lock:
            seen.setdefault(topic, []).append(int(payload))

    subscribed(consumer, "k/+", handler)
    assert publisher.wait_connected(5)
    for seq in range(200):
        for key in ("k/a", "k/b", "k/c"):
            publisher.publish(key, str(seq))
    wait_until(lambda: sum(map(len, seen.values())) == 600)
    assert seen == {key: list(range(200)) for key in ("k/a", "k/b", "k/c")}


def test_handlers_and_listeners_never_run_on_the_network_thread(mosquitto, make_client):
    client = make_client(mosquitto, start=False, name="cluster")
    listener_threads = []
    client.add_connect_listener(lambda: listener_threads.append(threading.current_thread()))
    inbox = Inbox()
    client.subscribe("x/#", inbox)
    client.start()
    assert client.wait_subscribed("x/#", 5)
    for n in range(20):
        mosquitto_pub(mosquitto, f"x/{n}", "p") if n < 2 else client.publish(f"x/{n}", "p")
    inbox.wait_count(20)
    network = {t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")}
    assert network, "paho's network thread should be running"
    handler_threads = {thread for _topic, _payload, thread in inbox.items}
    assert not handler_threads & network
    assert all(name.startswith("cluster-worker-") for name in handler_threads)
    wait_until(lambda: listener_threads)
    assert listener_threads[0].name == "cluster-events"


def test_broker_restart_reconnects_and_resubscribes(mosquitto, make_client):
    client = make_client(mosquitto, start=False)
    connects = []
    client.add_connect_listener(lambda: connects.append(client.stats()["reconnects"]))
    inbox = Inbox()
    client.subscribe("nodes/+/net/#", inbox)
    client.start()
    assert client.wait_subscribed("nodes/+/net/#", 5)
    mosquitto_pub(mosquitto, "nodes/n1/net/subnet", "before")
    inbox.wait_count(1)

    mosquitto.restart()
    wait_until(lambda: client.stats()["reconnects"] == 1, message="reconnect")
    assert client.wait_subscribed("nodes/+/net/#", 5)
    mosquitto_pub(mosquitto, "nodes/n1/net/subnet", "after")
    inbox.wait_count(2)
    assert inbox.payloads() == [b"before", b"after"]
    wait_until(lambda: connects == [0, 1], message="connect listener after each connect")


def test_start_without_broker_then_broker_appears(tmp_path, make_client, caplog):
    port = free_port()
    client = make_client(port, start=False, workers=1)
    inbox = Inbox()
    client.subscribe("q/#", inbox)
    with caplog.at_level(logging.WARNING):
        client.start()  # must not raise
        client.publish("q/queued", "sent while down")  # QoS 1: waits in paho's queue
        client.publish("q/lost", "qos0 while down", qos=0)
        assert not client.wait_connected(0.3)
    assert any(r.getMessage().startswith("mqtt broker unreachable") for r in caplog.records)
    assert client.stats()["dropped"] == 1

    with Broker(tmp_path / "late", port=port):
        assert client.wait_connected(5)
        inbox.wait_count(1)
        assert inbox.items[0][:2] == ("q/queued", b"sent while down")


def test_shared_subscription_splits_messages_and_wildcards_match(mosquitto, make_client):
    first, second = Inbox(), Inbox()
    one = make_client(mosquitto, name="one")
    two = make_client(mosquitto, name="two")
    subscribed(one, "$share/cluster-sm/nodes/+/net/#", first)
    subscribed(two, "$share/cluster-sm/nodes/+/net/#", second)
    other = Inbox()
    subscribed(one, "jobs/#", other)
    for n in range(10):
        mosquitto_pub(mosquitto, f"nodes/n{n}/net/subnet", str(n))
    mosquitto_pub(mosquitto, "nodes/n1/job", "not matched")
    mosquitto_pub(mosquitto, "jobs", "parent level matches #")
    wait_until(lambda: len(first.items) + len(second.items) == 10)
    got = sorted(int(p) for p in first.payloads() + second.payloads())
    assert got == list(range(10)), "each message goes to exactly one group member"
    other.wait_count(1)
    assert other.items[0][:2] == ("jobs", b"parent level matches #")
    assert all(topic.startswith("nodes/") for topic, _p, _t in first.items + second.items)


def test_unsubscribe_stops_delivery(mosquitto, make_client):
    client = make_client(mosquitto, workers=1)
    gone, marker = Inbox(), Inbox()
    subscribed(client, "gone/#", gone)
    subscribed(client, "marker", marker)
    client.unsubscribe("gone/#")
    client.unsubscribe("never/subscribed")  # ignored
    # Same connection: the broker handles the UNSUBSCRIBE before these PUBLISHes.
    client.publish("gone/x", "late")
    client.publish("marker", "m")
    marker.wait_count(1)
    assert gone.items == []
    assert client.stats()["received"] == 1, "the broker still delivered gone/x"


def test_full_handler_queue_drops_and_counts(mosquitto, make_client, caplog):
    release, entered = threading.Event(), threading.Event()
    handled = []

    def slow(topic, payload):
        entered.set()
        release.wait(5)
        handled.append(payload)

    client = make_client(mosquitto, workers=1, queue_size=5)
    subscribed(client, "flood/#", slow)
    publisher = make_client(mosquitto, name="pub")
    publisher.publish("flood/0", "0")
    assert entered.wait(5)
    with caplog.at_level(logging.WARNING):
        for n in range(1, 20):
            publisher.publish(f"flood/{n}", str(n))
        wait_until(lambda: client.stats()["received"] == 20)
    assert client.stats()["dropped"] == 14
    assert any("handler queue full" in r.getMessage() for r in caplog.records)
    release.set()
    wait_until(lambda: len(handled) == 6)
    assert handled == [b"0", b"1", b"2", b"3", b"4", b"5"]


def test_connect_listener_error_is_logged_and_others_still_run(mosquitto, make_client, caplog):
    client = make_client(mosquitto, start=False)
    calls = []
    client.add_connect_listener(lambda: 1 / 0)
    client.add_connect_listener(lambda: calls.append("second"))
    with caplog.at_level(logging.ERROR):
        client.start()
        wait_until(lambda: calls == ["second"])
    assert client.stats()["handler_errors"] == 1
    assert any(r.getMessage() == "mqtt connect listener failed" for r in caplog.records)


def test_username_and_password(tmp_path, make_client, caplog):
    password_file = mosquitto_password_file(tmp_path / "passwd", {"cluster": "s3cret"})
    broker = Broker(
        tmp_path / "auth", allow_anonymous=False, extra_config=[f"password_file {password_file}"]
    )
    with broker:
        with caplog.at_level(logging.WARNING):
            wrong = make_client(broker, name="wrong", username="cluster", password="guess")
            anonymous = make_client(broker, name="anon")
            assert not wrong.wait_connected(1.0)
            assert not anonymous.connected
        refused = [r for r in caplog.records if r.getMessage() == "mqtt connection refused"]
        assert refused and "authori" in refused[0].fields["reason"].lower()
        right = make_client(broker, name="right", username="cluster", password="s3cret")
        assert right.wait_connected(5)


def test_tls_with_client_certificate(tmp_path, make_client):
    pki = make_pki(tmp_path)
    tls = [
        f"cafile {pki / 'ca.crt'}",
        f"certfile {pki / 'server.crt'}",
        f"keyfile {pki / 'server.key'}",
        "require_certificate true",
    ]
    with Broker(tmp_path / "tls", extra_config=tls) as broker:
        client = make_client(
            broker,
            name="tls",
            ca_file=str(pki / "ca.crt"),
            cert_file=str(pki / "cluster_net.crt"),
            key_file=str(pki / "cluster_net.key"),
            key_password="keypass",
        )
        inbox = Inbox()
        subscribed(client, "secure/#", inbox)
        client.publish("secure/x", "over tls")
        inbox.wait_count(1)
        no_cert = make_client(broker, name="nocert", ca_file=str(pki / "ca.crt"))
        assert not no_cert.wait_connected(0.5)
    with pytest.raises(ValueError, match="TLS configuration invalid"):
        MqttClient(
            MqttConfig(
                "127.0.0.1",
                1,
                "c",
                ca_file=str(pki / "ca.crt"),
                cert_file=str(pki / "cluster_net.crt"),
                key_file=str(pki / "cluster_net.key"),
                key_password="wrong",
            )
        )


def test_stop_is_idempotent_and_later_publishes_are_dropped(mosquitto, make_client):
    client = make_client(mosquitto)
    assert client.wait_connected(5)
    started = time.monotonic()
    client.stop()
    client.stop()
    assert time.monotonic() - started < 3
    assert not client.connected
    client.publish("jobs/x", "after stop")
    assert client.stats()["dropped"] == 1
    with pytest.raises(RuntimeError, match="already started"):
        client.start()
    assert not [t for t in threading.enumerate() if t.name.startswith("mqtt-worker-")]


def test_stop_from_inside_a_handler(mosquitto, make_client):
    client = make_client(mosquitto, workers=1)
    done = threading.Event()

    def handler(topic, payload):
        client.stop(timeout=1)
        done.set()

    subscribed(client, "shutdown", handler)
    client.publish("shutdown", "now")
    assert done.wait(5)
    assert not client.connected


def test_remembered_routes_follow_subscription_changes(mosquitto, make_client):
    """A topic's matching subscriptions are remembered; (un)subscribing must still count."""
    client = make_client(mosquitto, workers=2)
    seen: list[tuple[str, bytes]] = []
    subscribed(client, "route/+", lambda t, p: seen.append(("wildcard", p)))
    publisher = make_client(mosquitto, name="pub")
    publisher.publish("route/1", "a")
    wait_until(lambda: seen == [("wildcard", b"a")])
    subscribed(client, "route/1", lambda t, p: seen.append(("exact", p)))
    publisher.publish("route/1", "b")
    wait_until(lambda: sorted(seen[1:]) == [("exact", b"b"), ("wildcard", b"b")])
    client.unsubscribe("route/+")
    publisher.publish("route/2", "d")  # no subscription of ours matches any more
    publisher.publish("route/1", "c")  # in order after "d": once it is in, "d" would be
    wait_until(lambda: seen[-1] == ("exact", b"c"))
    assert ("wildcard", b"c") not in seen and all(p != b"d" for _, p in seen)
