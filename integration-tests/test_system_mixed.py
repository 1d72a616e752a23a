"""A mixed cluster: our root and cluster managers, our net manager on w1, and on w2 the
raw-tunnel peer (testbed/rawpeer.py), a node that speaks the wire protocol as upstream's
Go NetManager does: raw IP packets in UDP, no offload frames, no RTT probes.

X1 runs on w1 (our node, the echo server), X3 on the peer. Traffic goes both ways
through service IPs: TCP bulk with checksums, UDP over IPv4 and IPv6, fragmented UDP
datagrams; then the peer's interests expire and it removes them by job name and by
service IP, and only the job name may reach the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from testbed.cluster import CLUSTER_PORT
from testbed.mixedcluster import MixedCluster, PeerHandle, PeerInstance, mixed_cluster
from testbed.nsnet import NetnsSockets
from testbed.orchestrator import APP_PORT, Instance, Orchestrator
from testbed.processes import Progress
from testbed.run import preflight
from testbed.status import metric, parse_metrics
from testbed.watch import TopicWatcher
from testsupport import wait_until

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(preflight() is not None, reason=f"system test: {preflight()}"),
    pytest.mark.timeout(180),
]

BULK_PORT = 40001
BULK_BYTES = 4 << 20
PEER_INTEREST_SECONDS = 3.0  # upstream's is 10 s; shorter keeps the test short
OTHER_CLUSTER = "6630c0000000000000000002"


# -------------------------------------------------------------------------- servers


class BulkEcho:
    """A TCP server in a container's namespace: reads to EOF, then sends it all back."""

    def __init__(self, sockets: NetnsSockets, port: int = BULK_PORT) -> None:
        self.listener = sockets.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("::", port))
        self.listener.listen(4)
        self.clients: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.clients.append(peer[0].removeprefix("::ffff:"))
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            chunks = []
            while data := conn.recv(1 << 16):
                chunks.append(data)
            conn.sendall(b"".join(chunks))

    def close(self) -> None:
        self.listener.close()


class UdpEcho:
    """A UDP server in the peer container's namespace, answering as echo_server.py does."""

    def __init__(self, sockets: NetnsSockets, name: str, port: int = APP_PORT) -> None:
        self.sock = sockets.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", port))
        self.name = name
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            client = peer[0].removeprefix("::ffff:")
            answer = {"instance": self.name, "client": client, "size": len(data)}
            self.sock.sendto(json.dumps(answer).encode(), peer)

    def close(self) -> None:
        self.sock.close()


def bulk_exchange(sockets: NetnsSockets, host: str, size: int = BULK_BYTES) -> tuple[str, str]:
    """Send `size` random bytes to the bulk echo at host and read them back: both digests."""
    data = os.urandom(size)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = sockets.socket(family, socket.SOCK_STREAM)
    sock.settimeout(60)
    received = hashlib.sha256()
    with sock:
        sock.connect((host, BULK_PORT))
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(1)))
        sender.start()
        while chunk := sock.recv(1 << 16):
            received.update(chunk)
        sender.join(60)
    return hashlib.sha256(data).hexdigest(), received.hexdigest()


def udp_exchange(sockets: NetnsSockets, host: str, payload: bytes, timeout: float = 5.0) -> dict:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = sockets.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    with sock:
        sock.sendto(payload, (host, APP_PORT))
        answer, _ = sock.recvfrom(65535)
    return json.loads(answer)


# -------------------------------------------------------------------------- the scene


class Scene:
    def __init__(self, cluster: MixedCluster, orch: Orchestrator, peer: PeerHandle) -> None:
        self.cluster, self.orch, self.peer = cluster, orch, peer
        self.w1 = cluster.workers[0]
        self.x1 = orch.deploy_service("X", "X1", rr_ip="10.30.0.1", rr_ip_v6="fdff:2000::1")
        self.x3 = orch.deploy_service("X", "X3", rr_ip="10.30.1.30", rr_ip_v6="fdff:2000::30")
        self.ours: Instance = orch.deploy_instance(self.x1, self.w1)
        self.theirs: PeerInstance = peer.deploy_instance(self.x3)
        self.bulk_ours = BulkEcho(self.ours.container.sockets)
        self.bulk_theirs = BulkEcho(self.theirs.sockets)
        self.udp_theirs = UdpEcho(self.theirs.sockets, self.theirs.name)

    @property
    def our_sockets(self) -> NetnsSockets:
        return self.ours.container.sockets

    def close(self) -> None:
        for server in (self.bulk_ours, self.bulk_theirs, self.udp_theirs):
            server.close()

    def root_interest_removals(self) -> float:
        reply = self.cluster.root_api("GET", "/metrics")
        samples = parse_metrics(reply.body)
        return metric(
            samples, "oakestra_http_requests_total", endpoint="net.remove_interest", status="200"
        )

    def cluster_log(self) -> str:
        return self.cluster.cluster.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def scene(tmp_path_factory, dataplane_mode) -> Iterator[Scene]:
    run_dir = tmp_path_factory.mktemp("mixed")
    options = {"run_dir": run_dir, "progress": Progress(sys.stderr)}
    options |= {"dataplane_mode": dataplane_mode, "interest_seconds": PEER_INTEREST_SECONDS}
    with mixed_cluster(**options) as started:
        scene = Scene(*started)
        try:
            yield scene
        finally:
            scene.close()


# -------------------------------------------------------------------------- tests


def test_the_peer_is_a_node_of_the_cluster(scene: Scene) -> None:
    """Registered over MQTT, its instance reported and known at the root with its location."""
    job = scene.peer.query(sname=scene.x3.job_name)
    (instance,) = job["instance_list"]
    assert instance["host_ip"] == scene.peer.address and instance["host_port"] == 50103
    assert instance["namespace_ip"] == scene.theirs.namespace_ip
    assert instance["worker_id"] == scene.peer.node_id


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_udp_both_ways(scene: Scene, family: str) -> None:
    v4 = family == "v4"
    x3_ip = scene.x3.rr_ip if v4 else scene.x3.rr_ip_v6
    x1_ip = scene.x1.rr_ip if v4 else scene.x1.rr_ip_v6
    # ours -> the peer's service: the peer's container sees our instance IP
    answer = udp_exchange(scene.our_sockets, x3_ip, b"hello")
    assert answer["instance"] == scene.theirs.name
    assert answer["client"] == (scene.ours.instance_ip if v4 else scene.ours.instance_ip_v6)
    # the peer's container -> our service: our container sees the peer's instance IP
    answer = udp_exchange(scene.theirs.sockets, x1_ip, b"hello")
    assert answer["instance"] == scene.ours.name
    assert answer["client"] == (scene.theirs.instance_ip if v4 else scene.theirs.instance_ip_v6)


def test_tcp_bulk_from_our_node_to_the_peer(scene: Scene) -> None:
    sent, received = bulk_exchange(scene.our_sockets, scene.x3.rr_ip)
    assert received == sent
    assert scene.bulk_theirs.clients[-1] == scene.ours.instance_ip


def test_tcp_bulk_from_the_peer_to_our_node(scene: Scene) -> None:
    sent, received = bulk_exchange(scene.theirs.sockets, scene.x1.rr_ip)
    assert received == sent
    assert scene.bulk_ours.clients[-1] == scene.theirs.instance_ip


def test_tcp_over_ipv6_both_ways(scene: Scene) -> None:
    for sockets, host in (
        (scene.our_sockets, scene.x3.rr_ip_v6),
        (scene.theirs.sockets, scene.x1.rr_ip_v6),
    ):
        sent, received = bulk_exchange(sockets, host, size=1 << 20)
        assert received == sent, host


def test_round_robin_spreads_over_both_kinds_of_nodes(scene: Scene) -> None:
    """X2 has an instance on w1 and one on the peer: calls from either side reach both.

    The peer's deploy returns once the cluster has its instance; w1 learns of it through
    the cluster's update at about the same moment (measured: w1's table changed 5 ms
    before the deploy returned, its kernel rules 18 ms after it), so the calls go on
    until both instances have answered. Rules keeping X2 on w1's instance for good fail."""
    x2 = scene.orch.deploy_service("X", "X2", rr_ip="10.30.2.2")
    ours = scene.orch.deploy_instance(x2, scene.w1)
    theirs = scene.peer.deploy_instance(x2)
    echo = UdpEcho(theirs.sockets, theirs.name)
    try:
        for sockets in (scene.our_sockets, scene.theirs.sockets):
            seen: set[str] = set()

            def spread(sockets: NetnsSockets = sockets, seen: set[str] = seen) -> bool:
                seen.update(udp_exchange(sockets, x2.rr_ip, b"hi")["instance"] for _ in range(4))
                return seen == {ours.name, theirs.name}

            wait_until(spread, timeout=5, message="calls from each side reach both X2 instances")
    finally:
        echo.close()


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_a_fragmented_datagram_on_a_warm_path_arrives_whole(scene: Scene, family: str) -> None:
    v4 = family == "v4"
    x3_ip = scene.x3.rr_ip if v4 else scene.x3.rr_ip_v6
    x1_ip = scene.x1.rr_ip if v4 else scene.x1.rr_ip_v6
    assert udp_exchange(scene.our_sockets, x3_ip, b"warm")["size"] == 4
    assert udp_exchange(scene.our_sockets, x3_ip, b"f" * 4000)["size"] == 4000
    assert udp_exchange(scene.theirs.sockets, x1_ip, b"warm")["size"] == 4
    assert udp_exchange(scene.theirs.sockets, x1_ip, b"f" * 4000)["size"] == 4000


def test_the_first_fragmented_datagram_after_a_table_miss_arrives_whole(scene: Scene) -> None:
    """X4 (on the peer) was never called from w1: the first datagram is a table miss."""
    x4 = scene.orch.deploy_service("X", "X4", rr_ip="10.30.4.4")
    instance = scene.peer.deploy_instance(x4)
    echo = UdpEcho(instance.sockets, instance.name)
    try:
        answer = udp_exchange(scene.our_sockets, x4.rr_ip, b"f" * 4000, timeout=8.0)
    finally:
        echo.close()
    assert answer == {"instance": instance.name, "client": scene.ours.instance_ip, "size": 4000}


def test_our_probes_reach_the_peer_and_are_ignored(scene: Scene) -> None:
    """Our node probes the RTT of every peer it knows (0xa5 datagrams); an upstream node
    drops them, and never gets an offload frame (0xa7): it never announced offload."""
    scene.peer.process.wait_until(
        lambda: scene.peer.counter("ignored_0xa5") > 0, 10, "a probe reached the peer"
    )
    assert scene.peer.counter("ignored_0xa7") == 0
    assert scene.peer.counter("errors") == 0


def test_the_peer_removes_its_interests_by_name_and_by_ip_and_only_names_reach_the_root(
    scene: Scene,
) -> None:
    """X5 runs in another cluster only: when the peer stops using it, nobody here needs it.
    The peer removes its interest in the job (the cluster then drops the root interest)
    and its pseudo-interest in the service IP (nothing may happen)."""
    x5 = scene.orch.deploy_service("X", "X5", rr_ip="10.30.5.5")
    scene.cluster.root_api("POST", "/api/net/cluster", {
        "cluster_id": OTHER_CLUSTER, "cluster_address": "198.18.0.253",
        "cluster_port": CLUSTER_PORT,
    })  # fmt: skip
    body = {"_id": x5.job_id, "instance_number": 0, "cluster_id": OTHER_CLUSTER}
    assert scene.cluster.root_api("POST", "/api/net/instance/deploy", body).status == 200
    location = {"instance_number": 0, "namespace_ip": "10.17.0.2", "namespace_ip_v6": "fc00::1:2",
                "host_ip": "198.18.0.3", "host_port": 50103}  # fmt: skip
    body = {"job_id": x5.job_id, "instances": [location]}
    assert scene.cluster.root_api("POST", "/api/net/service/net_deploy_status", body).status == 200
    removals_before = scene.root_interest_removals()

    with TopicWatcher(scene.cluster, [f"nodes/{scene.peer.node_id}/net/interest/#"]) as watcher:
        # datagrams from the peer's container: a table miss at the peer, a query by IP
        # (sent again while unanswered: on a loaded machine the peer's 5 s query wait,
        # upstream's, can run out before the root answers, and the peer drops the packet)
        sock = scene.theirs.sockets.socket(socket.AF_INET, socket.SOCK_DGRAM)

        last_sent = [-1.0]

        def follows_x5() -> bool:
            if x5.job_name in scene.peer.status()["interests"]:
                return True
            if time.monotonic() - last_sent[0] >= 1.0:
                sock.sendto(b"hello", (x5.rr_ip, APP_PORT))
                last_sent[0] = time.monotonic()
            return False

        with sock:
            scene.peer.process.wait_until(follows_x5, 30, "the peer follows X5")
        for name in (x5.job_name, x5.rr_ip):
            watcher.wait_for(lambda m, n=name: m.payload == {"appname": n}, 10)

    # the job: nobody here needs X5, the cluster drops its root interest
    scene.peer.process.wait_until(
        lambda: scene.root_interest_removals() > removals_before, 10, "root interest dropped"
    )
    # the service IP: logged and ignored; a root call for it would be queued in the same
    # lane after the job's, so a later query that needs the root proves it never came
    scene.peer.process.wait_until(
        lambda: f"service_ip={x5.rr_ip}" in scene.cluster_log(), 5, "pseudo-interest ignored"
    )
    unknown = scene.peer.query(sname="X.default.Nothing.default")
    assert unknown["app_name"] is None
    assert scene.root_interest_removals() == removals_before + 1
    assert f"job_name={x5.rr_ip}" not in scene.cluster_log()
    assert x5.job_name not in scene.peer.status()["interests"]
