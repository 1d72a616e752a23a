"""A minimal raw-tunnel peer: an upstream-like node for mixed-cluster tests.

    python -m testbed.rawpeer --node-id ID --broker HOST:PORT --address 198.18.0.2 \
        --control /run/dir/rawpeer.sock [--port 50103] [--interest-seconds 10]

Run inside a node namespace of a testbed topology (mixedcluster.py starts it). It
behaves on the wire as the upstream Go NetManager does (reference §3, §6, §7), so our
node and managers can be tested against a peer that is not one of ours:

- MQTT, client id = node id: at start it asks for its subnet (`subnet {"METHOD":"GET"}`,
  waits for `subnetwork/result`); a deployed instance is reported on `service/deployed`
  (`host_port` as a string), then a forced table query by job name; a table miss is a
  query by service IP; after a query by IP it follows the job (`jobs/<job>/
  updates_available`, any message = a forced refresh by name) and keeps the queried IP
  as a pseudo-interest. An interest unused for `--interest-seconds` is removed with
  `interest/remove {"appname": <job or service IP>}` (the IP one always expires, it is
  never used), the job's entries dropped; jobs with a local instance never expire.
- Tunnel: UDP payload = one raw IPv4/IPv6 packet, nothing else. It receives on
  `--port` and sends from one connected socket per destination node (an ephemeral
  source port, as upstream's `net.DialUDP`). Datagrams whose first nibble is not 4 or
  6 (our nodes' RTT probes and offload frames) are ignored and counted; it never
  sends either, so our nodes treat it as a plain peer.
- Translation, for its local instances: a TCP/UDP packet from a container to a service
  IP (10.30.0.0/16, or the IPv6 range `--proxy-v6`, fdff::/16 by default: what the
  operations guide tells upstream nodes to set) gets source = the container's
  instance IP, destination = a namespace IP of an instance chosen at random (kept per
  flow), then goes to that instance's node; a reply whose (local address, local port,
  remote port) matches a flow gets its source set back to the service IP. Anything
  else from the tunnel is written to the TUN unchanged.

What it does not do: ICMP (dropped both ways, as upstream), IPv6 extension headers
other than fragments, port mappings, unikernels, undeploy, address changes, TLS or
broker credentials. Unlike upstream it carries fragments (see rawpacket.py), so that
our node's fragment handling is what a test of fragments checks.

Its control socket (`--control`, HTTP over a unix socket, as the net manager's) is for
the test that plays the node engine: `POST /container/deploy {netns, serviceName,
instanceNumber}`, `POST /tablequery {sname, sip}`, `GET /status`.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import random
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from oakestra_net.mqtt import MqttClient, MqttConfig
from testbed.rawpacket import TCP, UDP, FragmentMap, parse, rewrite

TUN_NAME, BRIDGE_NAME = "rawtun0", "rawbr0"
TUN_V4, TUN_V6 = "10.19.1.254/12", "fcef::dead:beef/7"  # upstream's tuncfg.json
SERVICE_V4 = ipaddress.ip_network("10.30.0.0/16")
MTU = 1450
QUERY_TIMEOUT = 5.0  # upstream's table query wait
SUBNET_TIMEOUT = 10.0
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def log(text: str, **fields: Any) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{time.strftime('%H:%M:%S')} rawpeer: {text} {extra}".rstrip(), flush=True)


def sh(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


# ------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Entry:
    """One instance as the peer's translation table holds it (reference §4.3)."""

    job_name: str
    instance_number: int
    namespace_ip: str
    namespace_ip_v6: str
    host_ip: str
    host_port: int
    service_ips: tuple[tuple[str, str, str], ...]  # (IpType, Address, Address_v6)

    @classmethod
    def from_result(cls, job_name: str, item: dict) -> Entry | None:
        """None for what upstream's validity check drops (no location, no service IP)."""
        try:
            ips = tuple((s["IpType"], s["Address"], s["Address_v6"]) for s in item["service_ip"])
            entry = cls(
                job_name,
                int(item["instance_number"]),
                str(ipaddress.ip_address(item["namespace_ip"])),
                str(ipaddress.ip_address(item["namespace_ip_v6"])),
                str(ipaddress.ip_address(item["host_ip"])),
                int(item["host_port"]),
                ips,
            )
        except (KeyError, TypeError, ValueError):
            return None
        return entry if ips else None

    def namespace(self, version: int) -> str:
        return self.namespace_ip if version == 4 else self.namespace_ip_v6

    def instance_ip(self, version: int) -> str | None:
        found = None
        for kind, v4, v6 in self.service_ips:
            if kind not in ("RR", "Closest"):  # upstream: anything else is the instance IP
                found = v4 if version == 4 else v6
        return found

    def lists(self, service_ip: str) -> bool:
        return any(service_ip in (_canon(v4), _canon(v6)) for _, v4, v6 in self.service_ips)


def _canon(text: str | None) -> str:
    try:
        return str(ipaddress.ip_address(text or ""))
    except ValueError:
        return ""


class Table:
    def __init__(self) -> None:
        self._jobs: dict[str, list[Entry]] = {}
        self._lock = threading.Lock()

    def replace(self, job_name: str, entries: list[Entry]) -> None:
        with self._lock:
            self._jobs[job_name] = entries

    def drop(self, job_name: str) -> None:
        with self._lock:
            self._jobs.pop(job_name, None)

    def _all(self) -> list[Entry]:
        with self._lock:
            return [e for entries in self._jobs.values() for e in entries]

    def by_service_ip(self, service_ip: str) -> list[Entry]:
        return [e for e in self._all() if e.lists(service_ip)]

    def by_namespace_ip(self, address: str) -> Entry | None:
        for entry in self._all():
            if address in (entry.namespace_ip, entry.namespace_ip_v6):
                return entry
        return None

    def snapshot(self) -> list[dict]:
        return [asdict(e) for e in self._all()]


# ------------------------------------------------------------------------------ the peer


@dataclass
class Interest:
    """A job or a queried service IP the peer follows; `local` ones never expire."""

    last_used: float
    local: bool
    is_job: bool


class RawPeer:
    """The node: its MQTT session, its table and interests, its TUN and tunnel socket."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.node_id: str = args.node_id
        self.address: str = args.address
        self.port: int = args.port
        self.lifetime: float = args.interest_seconds
        self.service_v6 = ipaddress.ip_network(args.proxy_v6)
        host, _, port = args.broker.rpartition(":")
        config = MqttConfig(host=host, port=int(port), client_id=self.node_id)
        self.mqtt = MqttClient(config, workers=2, name="rawpeer")
        self.table = Table()
        self.counters: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self.interests: dict[str, Interest] = {}
        self._interest_lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Event, list[dict]]] = {}
        self._pending_lock = threading.Lock()
        self._subnet: dict | None = None
        self._subnet_event = threading.Event()
        self.flows: dict[tuple, str] = {}  # (proto, src, sport, service IP, dport) -> nsip
        self.reverse: dict[tuple, str] = {}  # (proto, local IP, local port, remote port) -> svc
        self.out_fragments, self.in_fragments = FragmentMap(), FragmentMap()
        self.random = random.Random(42)  # upstream seeds its choice with 42 too
        self.senders: dict[tuple[str, int], socket.socket] = {}
        self.local_instances: list[dict] = []
        self.tun_fd = -1
        self.sock: socket.socket | None = None
        self.stopping = threading.Event()

    def count(self, name: str) -> None:
        with self._count_lock:
            self.counters[name] += 1

    # -- MQTT ------------------------------------------------------------------------------

    def topic(self, kind: str) -> str:
        return f"nodes/{self.node_id}/net/{kind}"

    def publish(self, kind: str, payload: dict) -> None:
        self.mqtt.publish(self.topic(kind), json.dumps(payload))

    def connect(self) -> None:
        self.mqtt.subscribe(self.topic("tablequery/result"), self._on_table_result)
        self.mqtt.subscribe(self.topic("subnetwork/result"), self._on_subnet)
        self.mqtt.start()
        for pattern in (self.topic("tablequery/result"), self.topic("subnetwork/result")):
            if not self.mqtt.wait_subscribed(pattern, 10):
                raise RuntimeError(f"broker did not confirm the subscription {pattern}")

    def request_subnet(self) -> dict:
        self.publish("subnet", {"METHOD": "GET"})
        if not self._subnet_event.wait(SUBNET_TIMEOUT):
            raise RuntimeError("no subnet within 10 s")  # upstream: log.Fatal
        assert self._subnet is not None
        return self._subnet

    def _on_subnet(self, _topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        if body.get("address") or body.get("addressv6"):
            self._subnet = body
            self._subnet_event.set()

    def query(self, *, sname: str = "", sip: str = "") -> dict | None:
        """One table query (a second one for the same key waits for the first)."""
        key = sip or sname
        with self._pending_lock:
            waiting = self._pending.get(key)
            first = waiting is None
            if waiting is None:
                waiting = self._pending[key] = (threading.Event(), [])
        if first:
            self.publish("tablequery/request", {"sname": sname, "sip": sip})
        answered = waiting[0].wait(QUERY_TIMEOUT)
        with self._pending_lock:
            if self._pending.get(key) is waiting:
                del self._pending[key]
        return waiting[1][0] if answered else None

    def _on_table_result(self, _topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        job_name = body.get("app_name")
        if job_name:
            entries = [Entry.from_result(job_name, i) for i in body.get("instance_list") or []]
            self.table.replace(job_name, [e for e in entries if e is not None])
        with self._pending_lock:
            waiting = self._pending.get(body.get("query_key", ""))
        if waiting is not None:
            waiting[1].append(body)
            waiting[0].set()

    # -- interests -------------------------------------------------------------------------

    def follow(self, name: str, *, is_job: bool, local: bool = False) -> None:
        with self._interest_lock:
            known = self.interests.get(name)
            if known is not None:
                known.local = known.local or local
                return
            self.interests[name] = Interest(time.monotonic(), local, is_job)
        if is_job:
            self.mqtt.subscribe(f"jobs/{name}/updates_available", self._on_update)
        log("interest registered", name=name)

    def used(self, job_name: str) -> None:
        with self._interest_lock:
            interest = self.interests.get(job_name)
            if interest is not None:
                interest.last_used = time.monotonic()

    def _on_update(self, topic: str, _payload: bytes) -> None:
        job_name = topic.split("/")[1]
        threading.Thread(target=self.query, kwargs={"sname": job_name}, daemon=True).start()

    def expire_interests(self) -> None:
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            with self._interest_lock:
                expired = [
                    (name, i)
                    for name, i in self.interests.items()
                    if not i.local and now - i.last_used > self.lifetime
                ]
                for name, _ in expired:
                    del self.interests[name]
            for name, interest in expired:
                self.publish("interest/remove", {"appname": name})
                if interest.is_job:
                    self.mqtt.unsubscribe(f"jobs/{name}/updates_available")
                    self.table.drop(name)
                log("interest removed", name=name)

    # -- setting up ------------------------------------------------------------------------

    def setup(self) -> None:
        subnet = self.request_subnet()
        self.subnet_v4 = ipaddress.ip_network(f"{subnet['address']}/26")
        self.subnet_v6 = ipaddress.ip_network(f"{subnet['addressv6']}/120")
        log("subnet", v4=self.subnet_v4, v6=self.subnet_v6)
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), IFF_TUN | IFF_NO_PI))
        self.tun_fd = fd
        sh("ip", "addr", "add", TUN_V4, "dev", TUN_NAME)
        sh("ip", "addr", "add", TUN_V6, "dev", TUN_NAME, "nodad")
        sh("ip", "link", "set", TUN_NAME, "mtu", str(MTU), "up")
        sh("ip", "link", "add", BRIDGE_NAME, "mtu", str(MTU), "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet_v4[1]}/26", "dev", BRIDGE_NAME)
        sh("ip", "addr", "add", f"{self.subnet_v6[1]}/120", "dev", BRIDGE_NAME, "nodad")
        sh("ip", "link", "set", BRIDGE_NAME, "up")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("0.0.0.0", self.port))

    def deploy(self, netns: str, job_name: str, number: int) -> dict:
        """The container network of one instance (upstream §6.2), then its report."""
        index = len(self.local_instances)
        nsip, nsip_v6 = self.subnet_v4[2 + index], self.subnet_v6[2 + index]
        host_side, inside = f"rawv{index}", f"rawc{index}"
        sh("ip", "link", "add", host_side, "mtu", str(MTU), "type", "veth",
           "peer", "name", inside, "netns", netns)  # fmt: skip
        sh("ip", "link", "set", host_side, "master", BRIDGE_NAME, "up")
        sh("ip", "-n", netns, "addr", "add", f"{nsip}/26", "dev", inside)
        sh("ip", "-n", netns, "addr", "add", f"{nsip_v6}/120", "dev", inside, "nodad")
        sh("ip", "-n", netns, "link", "set", inside, "mtu", str(MTU), "up")
        sh("ip", "-n", netns, "route", "add", "default", "via", str(self.subnet_v4[1]))
        sh("ip", "-n", netns, "-6", "route", "add", "default", "via", str(self.subnet_v6[1]))
        report = {
            "appname": job_name,
            "status": "DEPLOYED",
            "instance_number": number,
            "nsip": str(nsip),
            "nsipv6": str(nsip_v6),
            "host_port": str(self.port),
            "host_ip": self.address,
        }
        self.publish("service/deployed", report)
        self.local_instances.append(report)
        self.follow(job_name, is_job=True, local=True)
        for _ in range(5):  # the forced refresh that teaches the node its own instance IPs
            self.query(sname=job_name)
            if self.table.by_namespace_ip(str(nsip)) is not None:
                break
        log("instance deployed", job=job_name, number=number, nsip=nsip)
        return {"serviceName": job_name, "nsAddress": str(nsip), "nsAddressv6": str(nsip_v6)}

    # -- data path -------------------------------------------------------------------------

    def is_service_ip(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip in (SERVICE_V4 if ip.version == 4 else self.service_v6)

    def read_tun(self) -> None:
        while not self.stopping.is_set():
            try:
                data = os.read(self.tun_fd, 65535)
            except OSError:
                return
            self.count("tun_packets")
            try:
                self.outgoing(data)
            except Exception as err:  # noqa: BLE001 - count and go on, like a data plane
                self.count("errors")
                log("outgoing packet failed", error=repr(err))

    def read_tunnel(self) -> None:
        assert self.sock is not None
        while not self.stopping.is_set():
            try:
                data, _peer = self.sock.recvfrom(65535)
            except OSError:
                return
            self.count("tunnel_datagrams")
            try:
                self.incoming(data)
            except Exception as err:  # noqa: BLE001
                self.count("errors")
                log("incoming packet failed", error=repr(err))

    def outgoing(self, data: bytes) -> None:
        packet = parse(data)
        if packet is None:
            self.count("drop_not_ip")
            return
        if packet.is_fragment and not packet.has_ports:
            mapped = self.out_fragments.lookup(packet)
            if mapped is None:
                self.count("drop_fragment_unknown")
                return
            self.forward(rewrite(data, packet, *mapped), mapped[1])
            return
        if packet.proto not in (TCP, UDP) or not packet.has_ports:
            self.count("drop_not_tcp_udp")
            return
        if not self.is_service_ip(packet.dst):
            self.count("drop_not_service_ip")
            return
        entries = self.table.by_service_ip(packet.dst)
        if not entries:  # blocking, like upstream's single outgoing handler
            self.count("table_misses")
            if self.query(sip=packet.dst) is not None:
                entries = self.table.by_service_ip(packet.dst)
                if entries:
                    self.follow(entries[0].job_name, is_job=True)
                    self.follow(packet.dst, is_job=False)
            if not entries:
                self.count("drop_unresolved")
                return
        self.used(entries[0].job_name)
        local = self.table.by_namespace_ip(packet.src)
        instance_ip = local.instance_ip(packet.version) if local is not None else None
        if not instance_ip:
            self.count("drop_no_instance_ip")
            return
        key = (packet.proto, packet.src, packet.sport, packet.dst, packet.dport)
        chosen = self.flows.get(key)
        if chosen not in {e.namespace(packet.version) for e in entries}:
            chosen = self.random.choice(entries).namespace(packet.version)
            self.flows[key] = chosen
            self.reverse[(packet.proto, packet.src, packet.sport, packet.dport)] = packet.dst
        if packet.is_fragment:
            self.out_fragments.remember(packet, instance_ip, chosen)
        self.forward(rewrite(data, packet, instance_ip, chosen), chosen)

    def forward(self, data: bytes, namespace_ip: str) -> None:
        entry = self.table.by_namespace_ip(namespace_ip)
        if entry is None:
            self.count("drop_no_location")
            return
        if entry.host_ip == self.address:
            self.incoming(data)
            return
        target = (entry.host_ip, entry.host_port)
        sender = self.senders.get(target)
        if sender is None:
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.connect(target)
            self.senders[target] = sender
        sender.send(data)
        self.count("sent")

    def incoming(self, data: bytes) -> None:
        if data[0] >> 4 not in (4, 6):  # e.g. our nodes' RTT probes (0xa5)
            self.count(f"ignored_0x{data[0]:02x}")
            return
        packet = parse(data)
        if packet is None:
            self.count("drop_malformed")
            return
        out = data
        if packet.is_fragment and not packet.has_ports:
            mapped = self.in_fragments.lookup(packet)
            if mapped is not None:
                out = rewrite(data, packet, *mapped)
        elif packet.proto not in (TCP, UDP):
            self.count("drop_not_tcp_udp")
            return
        else:
            service_ip = self.reverse.get((packet.proto, packet.dst, packet.dport, packet.sport))
            if service_ip is not None:
                out = rewrite(data, packet, service_ip, packet.dst)
                if packet.is_fragment:
                    self.in_fragments.remember(packet, service_ip, packet.dst)
        os.write(self.tun_fd, out)
        self.count("delivered")

    # -- control ---------------------------------------------------------------------------

    def status(self) -> dict:
        now = time.monotonic()
        with self._count_lock:
            counters = dict(self.counters)
        with self._interest_lock:
            interests = {
                name: {"local": i.local, "job": i.is_job, "idle_seconds": now - i.last_used}
                for name, i in self.interests.items()
            }
        return {
            "node_id": self.node_id,
            "subnet": str(self.subnet_v4),
            "subnet_v6": str(self.subnet_v6),
            "counters": counters,
            "table": self.table.snapshot(),
            "interests": interests,
            "instances": self.local_instances,
        }

    def serve(self, path: str) -> socketserver.BaseServer:
        if os.path.exists(path):
            os.unlink(path)
        server = _ControlServer(path, _make_handler(self))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def stop(self) -> None:
        self.stopping.set()
        self.mqtt.stop()


class _ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _make_handler(peer: RawPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def address_string(self) -> str:
            return "control"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/status":
                self._answer(200, peer.status())
            else:
                self._answer(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            try:
                if self.path == "/container/deploy":
                    answer = peer.deploy(
                        body["netns"], body["serviceName"], int(body["instanceNumber"])
                    )
                    self._answer(200, answer)
                elif self.path == "/tablequery":
                    result = peer.query(sname=body.get("sname", ""), sip=body.get("sip", ""))
                    self._answer(200 if result is not None else 504, result)
                else:
                    self._answer(404, {"error": f"no route {self.path}"})
            except Exception as err:  # noqa: BLE001 - the test wants to read why
                self._answer(500, {"error": repr(err)})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--broker", required=True, help="host:port")
    parser.add_argument("--address", required=True, help="this node's underlay address")
    parser.add_argument("--port", type=int, default=50103)
    parser.add_argument("--control", required=True, help="unix socket path")
    parser.add_argument("--interest-seconds", type=float, default=10.0)
    parser.add_argument("--proxy-v6", default="fdff::/16")
    args = parser.parse_args(argv)
    peer = RawPeer(args)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    peer.connect()
    peer.setup()
    for target in (peer.read_tun, peer.read_tunnel, peer.expire_interests):
        threading.Thread(target=target, daemon=True).start()
    server = peer.serve(args.control)
    log("ready", node_id=peer.node_id, subnet=peer.subnet_v4)
    done.wait()
    server.shutdown()
    peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
