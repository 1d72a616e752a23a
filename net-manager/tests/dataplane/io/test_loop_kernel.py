"""The data plane with real TUN devices, between two node namespaces (kernel tier, root).

The namespace testbed (integration-tests/testbed) builds nodes n1 and n2 on an underlay
bridge (198.18.0.0/24); n1 holds containers c1 and c3, n2 holds c2, each with its
namespace IP and a default route via its node's bridge. Each node runs the real
data-plane process under a DataPlaneSupervisor, with a static table pushed by the test
(the seed example: X3's RR IP 10.30.1.30 / fdff:2000::1e served by c2 on n2; X4's
10.30.1.40 served by c3 beside the client). Servers in the containers report the
address they saw the client come from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry
from net_manager.dataplane.supervisor import DataPlaneSupervisor
from testsupport import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "integration-tests"))
from testbed import Testbed, two_nodes, unique_prefix  # noqa: E402
from testbed.topology import CONTAINER_LINK, UNDERLAY_BRIDGE  # noqa: E402

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="needs /dev/net/tun"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
    pytest.mark.timeout(120),
]

X1, X3, X4, X5 = (f"X.default.X{i}.default" for i in (1, 3, 4, 5))
PORT = 50103
N1, N2 = "198.18.0.1", "198.18.0.2"
C1 = Endpoint(X1, 0, "10.16.0.2", "fc00::2", "10.30.0.2", "fdff::2", N1, PORT)
C2 = Endpoint(X3, 0, "10.16.0.66", "fc00::102", "10.30.0.6", "fdff::6", N2, PORT)
C3 = Endpoint(X4, 0, "10.16.0.3", "fc00::3", "10.30.0.7", "fdff::7", N1, PORT)
X3_RR = ServiceEntry("10.30.1.30", "fdff:2000::1e", "RR", (C2,))
X4_RR = ServiceEntry("10.30.1.40", "fdff:2000::28", "RR", (C3,))
X5_RR = ServiceEntry("10.30.1.50", "fdff:2000::32", "RR", (C2,))  # not in the table at first
INSTANCE_IPS = [
    ServiceEntry(e.instance_ip, e.instance_ip_v6, "instance_ip", (e,)) for e in (C1, C2, C3)
]

SERVER = r"""
import hashlib, json, socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def plain(ip):
    return ip[7:] if ip.startswith("::ffff:") else ip

def big(size):
    return (bytes(range(256)) * (size // 256 + 1))[:size]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/big/"):
            body = big(int(self.path[5:]))
        else:
            body = json.dumps({"client": plain(self.client_address[0]), "path": self.path})
            body = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        body = hashlib.sha256(data).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

def udp_echo():
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 7777))
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(json.dumps({"client": plain(peer[0]), "size": len(data)}).encode(), peer)

threading.Thread(target=udp_echo, daemon=True).start()
server = Server(("::", 8080), Handler)
print("ready", flush=True)
server.serve_forever()
"""

HTTP_GET = r"""
import sys, urllib.request
host = sys.argv[1]
url = f"http://[{host}]:8080/hello" if ":" in host else f"http://{host}:8080/hello"
print(urllib.request.urlopen(url, timeout=5).read().decode())
"""

BULK = r"""
import hashlib, sys, urllib.request
host, size = sys.argv[1], int(sys.argv[2])
base = f"http://[{host}]:8080" if ":" in host else f"http://{host}:8080"
data = (bytes(range(256)) * (size // 256 + 1))[:size]
down = urllib.request.urlopen(f"{base}/big/{size}", timeout=20).read()
up = urllib.request.urlopen(urllib.request.Request(base, data=data), timeout=20).read()
print(hashlib.sha256(down).hexdigest() == hashlib.sha256(data).hexdigest(), end=" ")
print(up.decode() == hashlib.sha256(data).hexdigest())
"""

UDP_REQUEST = r"""
import json, socket, sys, time
host, timeout = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(timeout)
start = time.perf_counter()
sock.sendto(b"x" * 100, (host, 7777))
data, peer = sock.recvfrom(65535)
print(json.dumps({"from": peer[0], "reply": json.loads(data), "rtt": time.perf_counter() - start}))
"""

PING = r"""
import os, socket, struct, sys, time
host = sys.argv[1]
v6 = ":" in host
family = socket.AF_INET6 if v6 else socket.AF_INET
sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
sock.settimeout(3)
ident, request_type, reply_type = os.getpid() & 0xFFFF, (128 if v6 else 8), (129 if v6 else 0)
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
payload = b"oakestra-ping"
header = struct.pack("!BBHHH", request_type, 0, 0, ident, 1)
if not v6:
    header = struct.pack("!BBHHH", request_type, 0, checksum(header + payload + b"\0"), ident, 1)
sock.sendto(header + payload, (host, 0))
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    data, peer = sock.recvfrom(2048)
    icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
    if icmp[0] == reply_type and struct.unpack("!H", icmp[4:6])[0] == ident:
        print(peer[0])
        break
"""


@dataclass
class NodePlane:
    supervisor: DataPlaneSupervisor
    resolves: list[str] = field(default_factory=list)
    answer: Callable[[str, Callable[[bool], None]], None] | None = None

    def counters(self) -> dict:
        return self.supervisor.counters()

    def fresh_counters(self) -> dict:
        """Counters from a report made after this call (two reports later)."""
        seen = self.supervisor.reports
        wait_until(lambda: self.supervisor.reports >= seen + 2, 5, message="counters report")
        return self.counters()


def start_plane(bed: Testbed, node: str, offload: str = "auto", tunnel_key: str = "") -> NodePlane:
    plane: NodePlane

    def on_resolve(service_ip: str, reply: Callable[[bool], None]) -> None:
        plane.resolves.append(service_ip)
        if plane.answer is not None:
            plane.answer(service_ip, reply)

    options = DataPlaneOptions(
        tun_name="oaktun0",
        tun_v4_cidr="10.19.1.254/12",
        tun_v6_cidr="fcef::dead:beef/7",
        mtu=1450,
        port=PORT,
        on_resolve=on_resolve,
        on_used=lambda jobs: None,
        netns_exec=bed.netns_exec(node),
        tunnel_key=tunnel_key,
    )
    supervisor = DataPlaneSupervisor(options, extra_args=["--offload", offload])
    plane = NodePlane(supervisor)
    supervisor.start()
    assert supervisor.wait_ready(15), f"data plane in {node} did not start"
    return plane


def push_n1(plane: NodePlane, *extra: ServiceEntry) -> None:
    plane.supervisor.push_snapshot([X3_RR, X4_RR, *INSTANCE_IPS, *extra], [C1, C3], N1)


# TUN offload on n1 / n2: "mixed" is an offload node next to one that takes no GSO
# frames (as an upstream node): n1 must segment and checksum in software. "sealed":
# offload, and the tunnel sealed with a key both nodes share.
MODES = {
    "offload": ("on", "on"),
    "plain": ("off", "off"),
    "mixed": ("on", "off"),
    "sealed": ("on", "on"),
}
TUNNEL_KEY = "3c" * 32


@pytest.fixture(scope="module", params=list(MODES))
def bed(request) -> Iterator[tuple[Testbed, NodePlane, NodePlane]]:
    planes: list[NodePlane] = []
    offload_n1, offload_n2 = MODES[request.param]
    key = TUNNEL_KEY if request.param == "sealed" else ""
    with Testbed(two_nodes(unique_prefix(), extra_container_on_n1=True)) as testbed:
        testbed.mode = request.param  # type: ignore[attr-defined]
        try:
            n1 = start_plane(testbed, "n1", offload_n1, key)
            n2 = start_plane(testbed, "n2", offload_n2, key)
            planes += [n1, n2]
            push_n1(n1)
            n2.supervisor.push_snapshot(INSTANCE_IPS, [C2], N2)
            for container in ("c2", "c3"):
                server = testbed.popen(
                    container, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
                )
                assert testbed.wait_for_line(server) == "ready"
            wait_until(lambda: all(p.counters().get("snapshots") for p in planes), 10)
            yield testbed, n1, n2
        finally:
            for plane in planes:
                plane.supervisor.stop()


def only_in(testbed: Testbed, mode: str) -> None:
    """Tests of the loop's logic run once (with offload); traffic tests in every mode."""
    if testbed.mode != mode:  # type: ignore[attr-defined]
        pytest.skip(f"covered in {mode} mode")


def http_get(bed: Testbed, host: str) -> dict:
    return json.loads(bed.python("c1", HTTP_GET, host, timeout=15))


def udp_request(bed: Testbed, host: str, timeout: float = 5.0) -> dict:
    return json.loads(bed.python("c1", UDP_REQUEST, host, str(timeout), timeout=timeout + 10))


@pytest.mark.parametrize(
    "service_ip, client_instance", [("10.30.1.30", "10.30.0.2"), ("fdff:2000::1e", "fdff::2")]
)
def test_http_get_through_the_rr_ip(bed, service_ip: str, client_instance: str) -> None:
    testbed, n1, n2 = bed
    assert http_get(testbed, service_ip) == {"client": client_instance, "path": "/hello"}
    assert n1.counters()["running"] == 1 and n1.supervisor.restarts == 0


@pytest.mark.parametrize(
    "service_ip, client_instance", [("10.30.1.30", "10.30.0.2"), ("fdff:2000::1e", "fdff::2")]
)
def test_udp_reply_comes_from_the_service_ip(bed, service_ip: str, client_instance: str) -> None:
    testbed, n1, n2 = bed
    answer = udp_request(testbed, service_ip)
    assert answer["from"] == service_ip  # the client sees the address it called
    assert answer["reply"] == {
        "client": client_instance,
        "size": 100,
    }  # the server, the instance IP


@pytest.mark.parametrize("service_ip", ["10.30.1.30", "fdff:2000::1e"])
def test_bulk_tcp_both_ways_arrives_intact(bed, service_ip: str) -> None:
    testbed, n1, n2 = bed
    assert testbed.python("c1", BULK, service_ip, "3000000", timeout=40).split() == [
        "True",
        "True",
    ]
    if testbed.mode == "mixed":  # type: ignore[attr-defined]
        assert n1.fresh_counters()["segmented_packets"] > 0
    elif testbed.mode == "offload":  # type: ignore[attr-defined]
        assert n1.fresh_counters()["gso_frames_sent"] > 0


@pytest.mark.parametrize("service_ip", ["10.30.1.30", "fdff:2000::1e"])
def test_ping_the_service_ip(bed, service_ip: str) -> None:
    testbed, _, _ = bed
    assert testbed.python("c1", PING, service_ip, timeout=10).strip() == service_ip


@pytest.mark.parametrize(
    "service_ip, client_instance", [("10.30.1.40", "10.30.0.2"), ("fdff:2000::28", "fdff::2")]
)
def test_local_instance_is_reached_without_the_tunnel(
    bed, service_ip: str, client_instance: str
) -> None:
    testbed, n1, n2 = bed
    if testbed.mode == "mixed":  # type: ignore[attr-defined]
        pytest.skip("local delivery does not involve n2: covered in offload and plain modes")
    before = n1.fresh_counters()
    assert http_get(testbed, service_ip) == {"client": client_instance, "path": "/hello"}
    assert udp_request(testbed, service_ip)["from"] == service_ip
    after = n1.fresh_counters()
    assert after["packets_out"] > before["packets_out"]
    assert after["tunnel_packets_sent"] == before["tunnel_packets_sent"]


def test_a_table_miss_waits_for_the_answer(bed) -> None:
    testbed, n1, n2 = bed
    only_in(testbed, "offload")
    answered = threading.Event()

    def answer(service_ip: str, reply: Callable[[bool], None]) -> None:
        push_n1(n1, X5_RR)
        reply(True)
        answered.set()

    n1.answer = answer
    try:
        result = udp_request(testbed, "10.30.1.50")
    finally:
        n1.answer = None
    assert answered.is_set() and n1.resolves.count("10.30.1.50") == 1
    assert result["from"] == "10.30.1.50" and result["reply"]["client"] == "10.30.0.2"
    print(f"first-packet latency on a table miss: {result['rtt'] * 1000:.2f} ms")
    assert result["rtt"] < 1.0
    assert n1.fresh_counters()["misses"] >= 1


def test_an_unanswered_miss_times_out_without_blocking_others(bed) -> None:
    testbed, n1, _ = bed
    only_in(testbed, "offload")
    before = n1.fresh_counters()
    blocked = threading.Thread(target=lambda: udp_request_quiet(testbed, "10.30.1.77"))
    blocked.start()
    wait_until(lambda: "10.30.1.77" in n1.resolves, 5, message="resolve request")
    assert udp_request(testbed, "10.30.1.30")["from"] == "10.30.1.30"  # not held up
    blocked.join(15)
    wait_until(
        lambda: n1.counters()["drop_resolve_timeout"] > before["drop_resolve_timeout"],
        10,
        message="queued packet dropped on timeout",
    )


def udp_request_quiet(testbed: Testbed, host: str) -> None:
    testbed.run("c1", [sys.executable, "-c", UDP_REQUEST, host, "6"], check=False, timeout=20)


def test_random_bytes_on_the_tunnel_port_deliver_nothing(bed) -> None:
    testbed, n1, n2 = bed
    only_in(testbed, "offload")
    before = n2.fresh_counters()
    junk = r"""
import os, random, socket
random.seed(5)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(300):
    data = os.urandom(random.randrange(0, 1500))
    if i % 3 == 0 and data:
        data = bytes([random.choice((0x45, 0x60))]) + data[1:]  # looks like IP
    sock.sendto(data, ("198.18.0.2", 50103))
"""
    testbed.python("n1", junk)
    after = n2.fresh_counters()
    dropped = sum(after[k] - before.get(k, 0) for k in after if k.startswith("drop_"))
    received = after["tunnel_packets_received"] - before["tunnel_packets_received"]
    assert received >= 290 and dropped >= received - 5  # a few may look like probes
    assert after["tun_packets_written"] == before["tun_packets_written"]
    assert n2.supervisor.restarts == 0
    assert http_get(testbed, "10.30.1.30")["client"] == "10.30.0.2"  # still serving


# Sent from a namespace on the underlay: one UDP datagram to n2's tunnel port per packet
# given (hex), from the given source address.
TUNNEL_SEND = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
for packet in sys.argv[2:]:
    sock.sendto(bytes.fromhex(packet), ("198.18.0.2", 50103))
"""


def test_tunnel_datagrams_from_strangers_or_with_spoofed_sources_are_not_delivered(bed) -> None:
    testbed, n1, n2 = bed
    only_in(testbed, "offload")
    from net_manager.dataplane.core.microbench import build_packet

    stranger = "198.18.0.99"  # a host on the underlay that is no node
    testbed.ip("ul", "addr", "add", f"{stranger}/24", "dev", UNDERLAY_BRIDGE)
    before = n2.fresh_counters()
    # n1 is a member, but c2's instance IP lives on n2; the stranger uses c1's, and a
    # namespace IP; c2's server would answer each of them (it listens on 7777).
    spoofed = build_packet(C2.instance_ip, C2.namespace_ip, 17, 5000, 7777).hex()
    as_c1 = build_packet(C1.instance_ip, C2.namespace_ip, 17, 5000, 7777).hex()
    as_ns = build_packet("10.16.0.2", C2.namespace_ip, 17, 5000, 7777).hex()
    testbed.python("n1", TUNNEL_SEND, N1, spoofed)
    testbed.python("ul", TUNNEL_SEND, stranger, as_c1, as_ns)
    wait_until(
        lambda: (
            n2.counters()["drop_spoofed_source"] > before["drop_spoofed_source"]
            and n2.counters()["drop_not_member"] >= before["drop_not_member"] + 2
        ),
        5,
        message="drops counted by reason",
    )
    after = n2.fresh_counters()
    assert after["tun_packets_written"] == before["tun_packets_written"]
    assert http_get(testbed, "10.30.1.30")["client"] == "10.30.0.2"  # members still served


@pytest.mark.parametrize("service_ip", ["10.30.1.30", "fdff:2000::1e"])
def test_a_server_node_that_never_queried_resolves_its_caller(bed, service_ip: str) -> None:
    """n2 serves X3 but knows no caller: the first request waits for c1's instance IP."""
    testbed, n1, n2 = bed
    own = [e for e in INSTANCE_IPS if e.endpoints[0] is C2]

    def answer(address: str, reply: Callable[[bool], None]) -> None:
        n2.supervisor.push_snapshot(INSTANCE_IPS, [C2], N2)
        reply(True)

    n2.answer = answer
    n2.resolves.clear()
    seen = n2.fresh_counters()["snapshots"]
    n2.supervisor.push_snapshot(own, [C2], N2)
    try:
        wait_until(lambda: n2.counters()["snapshots"] > seen, 5, message="table without c1")
        # bulk both ways: with offload, n1 sends every packet as a GSO frame
        assert testbed.python("c1", BULK, service_ip, "1000000", timeout=40).split() == [
            "True",
            "True",
        ]
    finally:
        n2.answer = None
        n2.supervisor.push_snapshot(INSTANCE_IPS, [C2], N2)
    assert set(n2.resolves) == {C1.instance_ip if ":" not in service_ip else C1.instance_ip_v6}


def test_a_sealed_tunnel_refuses_plain_datagrams_even_from_a_member(bed) -> None:
    testbed, n1, n2 = bed
    only_in(testbed, "sealed")
    from net_manager.dataplane.core.microbench import build_packet

    before = n2.fresh_counters()
    plain = build_packet(C1.instance_ip, C2.namespace_ip, 17, 5000, 7777).hex()
    testbed.python("n1", TUNNEL_SEND, N1, plain)
    wait_until(
        lambda: n2.counters()["drop_not_sealed"] > before["drop_not_sealed"],
        5,
        message="plain datagram refused",
    )
    assert n2.fresh_counters()["packets_in"] == before["packets_in"]
    assert http_get(testbed, "10.30.1.30")["client"] == "10.30.0.2"  # sealed traffic flows


X6_V4 = ServiceEntry("10.30.1.60", "", "RR", (C2,))  # resolved only when first used
X6_V6 = ServiceEntry("", "fdff:2000::3c", "RR", (C2,))
UDP_BIG = r"""
import json, socket, sys
host = sys.argv[1]
sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(5)
sock.sendto(b"y" * 4000, (host, 7777))
data, peer = sock.recvfrom(65535)
print(json.dumps({"from": peer[0], "reply": json.loads(data)}))
"""


@pytest.mark.parametrize("entry", [X6_V4, X6_V6], ids=["v4", "v6"])
def test_a_fragmented_datagram_to_an_unresolved_service_ip_arrives_whole(
    bed, entry: ServiceEntry
) -> None:
    testbed, n1, n2 = bed
    service_ip = entry.service_ip or entry.service_ip_v6

    def answer(address: str, reply: Callable[[bool], None]) -> None:
        push_n1(n1, entry)
        reply(True)

    n1.answer = answer
    # As the net manager sets it (the testbed leaves the container's side at 1500, so
    # its 1500-byte fragments would be dropped by the bridge port before any proxy).
    testbed.ip("c1", "link", "set", CONTAINER_LINK, "mtu", "1450")
    try:
        result = json.loads(testbed.python("c1", UDP_BIG, service_ip, timeout=15))
    finally:
        n1.answer = None
        testbed.ip("c1", "link", "set", CONTAINER_LINK, "mtu", "1500")
        push_n1(n1)
    assert n1.resolves.count(service_ip) == 1
    assert result["from"] == service_ip and result["reply"]["size"] == 4000
    assert n1.fresh_counters()["drop_fragment_unknown"] == 0


def test_peers_measure_their_rtt(bed) -> None:
    testbed, n1, n2 = bed
    only_in(testbed, "offload")
    wait_until(lambda: N2 in n1.supervisor.rtt, 10, message="RTT to n2 measured")
    assert 0 < n1.supervisor.rtt[N2] < 0.5


def test_stopping_removes_the_tun(bed) -> None:
    testbed, _, _ = bed
    only_in(testbed, "offload")
    plane = start_plane(testbed, "c2")  # a third data plane, in a namespace of its own
    links = testbed.run("c2", ["ip", "-o", "link", "show", "oaktun0"], check=False)
    assert links.returncode == 0
    plane.supervisor.stop()
    started = time.monotonic()
    while testbed.run("c2", ["ip", "link", "show", "oaktun0"], check=False).returncode == 0:
        assert time.monotonic() - started < 5, "TUN still there after stop"
        time.sleep(0.05)
