"""Table answers are never lost around a (re)connect (real Mosquitto, a reordering proxy).

The node session and the table queries are wired as the daemon wires them; a "cluster"
client answers every query at once, as a fast cluster does. The proxy makes the two
races of a restart deterministic instead of one run in fifteen.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest
from mqtt_proxy import MqttProxy
from nm_fakes import FakeKernel

from net_manager.config import NetConfig
from net_manager.control.daemon import NodeDaemon
from net_manager.control.services.queries import TableQueries
from net_manager.control.session import NodeSession
from net_manager.node.kernel import netns_path_of_pid
from oakestra_net.messages import TableQueryResult
from oakestra_net.mqtt import MqttClient, MqttConfig
from testsupport import wait_until

pytestmark = pytest.mark.system

NODE = "node-a"
JOB = "app.default.web.default"


def _answer(sname: str) -> bytes:
    return json.dumps(
        {
            "app_name": sname,
            "query_key": sname,
            "instance_list": [
                {
                    "instance_number": 0,
                    "instance_ip": "10.30.0.7",
                    "instance_ip_v6": "fdff::7",
                    "cluster_id": "c1",
                    "namespace_ip": "10.16.0.2",
                    "namespace_ip_v6": "fc00::2",
                    "host_ip": "127.0.0.2",
                    "host_port": 50103,
                    "service_ip": [
                        {"IpType": "RR", "Address": "10.30.0.1", "Address_v6": "fdff:2000::1"}
                    ],
                }
            ],
        }
    ).encode()


class FastCluster:
    """Answers every table query (and subnet request) the moment it arrives; counts queries."""

    def __init__(self, port: int) -> None:
        self.requests = 0
        self.client = MqttClient(
            MqttConfig(host="127.0.0.1", port=port, client_id="cluster"), name="cluster"
        )
        self.client.subscribe("nodes/+/net/tablequery/request", self._answer)
        self.client.subscribe("nodes/+/net/subnet", self._subnet)

    def start(self) -> FastCluster:
        self.client.start()
        assert self.client.wait_subscribed("nodes/+/net/tablequery/request", 5)
        assert self.client.wait_subscribed("nodes/+/net/subnet", 5)
        return self

    def _answer(self, topic: str, payload: bytes) -> None:
        self.requests += 1
        sname = json.loads(payload)["sname"]
        self.client.publish(f"nodes/{_node(topic)}/net/tablequery/result", _answer(sname))

    def _subnet(self, topic: str, _payload: bytes) -> None:
        answer = json.dumps({"address": "10.16.0.0", "addressv6": "fc00::"})
        self.client.publish(f"nodes/{_node(topic)}/net/subnetwork/result", answer)


def _node(topic: str) -> str:
    return re.match(r"nodes/([^/]+)/", topic).group(1)  # type: ignore[union-attr]


class Node:
    """A NodeSession through the proxy with TableQueries wired as the daemon wires them."""

    def __init__(self, proxy_port: int) -> None:
        self.results: list[TableQueryResult | None] = []
        config = MqttConfig(
            host="127.0.0.1",
            port=proxy_port,
            client_id=NODE,
            min_reconnect_delay=0.1,
            max_reconnect_delay=0.5,
        )
        self.queries = TableQueries(lambda request: self.session.query(request), timeout=5.0)
        self.session = NodeSession(
            config,
            NODE,
            on_table_result=self.queries.on_result,
            on_job_update=lambda _job: None,
            on_ready=self.queries.resend_pending,
        )

    def ask(self) -> None:
        self.queries.query_async(sname=JOB, callback=self.results.append)

    def answered(self) -> bool:
        return any(result is not None and result.app_name == JOB for result in self.results)


@pytest.fixture
def proxy(mosquitto) -> Iterator[MqttProxy]:
    proxy = MqttProxy(mosquitto.port)
    yield proxy
    proxy.close()


@pytest.fixture
def cluster(mosquitto) -> Iterator[FastCluster]:
    cluster = FastCluster(mosquitto.port).start()
    yield cluster
    cluster.client.stop()


@pytest.fixture
def node(proxy) -> Iterator[Node]:
    node = Node(proxy.port)
    yield node
    node.session.stop()


def test_a_query_made_before_the_connack_is_answered(proxy, cluster, node, mqtt_recorder):
    """The restart race: the daemon asks for its local jobs while the connection is still
    opening. A query must not reach the cluster before our result subscription is live."""
    answers = mqtt_recorder("nodes/+/net/tablequery/result")
    proxy.hold_connack.set()
    node.session.start()
    wait_until(proxy.connack_held.is_set, message="client connected, CONNACK held")

    node.ask()
    # Either the query was held back, or (the race) it reached the cluster, whose answer
    # the broker has then already routed: to the recorder, not to the unsubscribed node.
    wait_until(lambda: node.session.stats().get("queries_deferred") or answers.messages())
    assert cluster.requests == 0, "a query went out before the result subscription was live"

    proxy.release_connack()
    wait_until(node.answered, timeout=4, message="table answer applied")
    assert node.queries.pending_keys() == []


def test_an_answer_lost_on_a_broken_connection_is_asked_again(proxy, cluster, node):
    """The answer is in flight when the connection breaks (the session is not persistent,
    so the broker keeps nothing for us): after the reconnect the query goes out again."""
    node.session.start()
    assert node.session.client.wait_subscribed(f"nodes/{NODE}/net/tablequery/result", 5)

    proxy.drop_publish_to_client.set()
    node.ask()
    wait_until(lambda: proxy.dropped >= 1, message="the answer was lost in the network")
    proxy.drop_publish_to_client.clear()
    proxy.cut()

    wait_until(node.answered, timeout=4, message="table answer after the reconnect")
    assert cluster.requests >= 2
    assert node.session.stats()["reconnects"] >= 1


def test_a_restarted_daemon_learns_its_local_jobs_table(proxy, cluster, tmp_path):
    """The whole daemon (fake kernel, real session): restarted with a live container while
    the broker's CONNACK is delayed, it still learns its own job's table."""
    config = NetConfig(
        node_public_address="198.18.0.10",
        cluster_url="127.0.0.1",
        cluster_mqtt_port=proxy.port,
        state_file=str(tmp_path / "state.json"),
    )

    def daemon() -> NodeDaemon:
        kernel = FakeKernel()
        kernel.namespaces.add(netns_path_of_pid(os.getpid()))  # our process: the container
        return NodeDaemon(config, kernel=kernel, dataplane_factory=None)

    def knows_job(node: NodeDaemon) -> bool:
        return any(entry["job_name"] == JOB for entry in node.table.to_status())

    first = daemon()
    first.start()
    try:
        first.register(NODE, "127.0.0.1")
        first.deploy_container(os.getpid(), JOB, 0, "")
        wait_until(lambda: knows_job(first), message="first daemon learned its job")
    finally:
        first.stop()

    proxy.hold_connack.set()
    second = daemon()
    second.start()  # resumes: reconnects and asks for its local job
    try:
        wait_until(proxy.connack_held.is_set, message="reconnecting, CONNACK held")
        proxy.release_connack()
        wait_until(lambda: knows_job(second), timeout=4, message="restarted daemon's table")
    finally:
        second.stop()
