"""Kernel tier: unikernel deployments over the unix socket, in real namespaces (root).

The daemon works on a node namespace (`Kernel(netns=…)`) and, being a test, puts the
node namespace's name in front of the named namespaces it creates
(`<node>-<job>.instance.<n>`), so everything here is called `oakt-…` and is removed
afterwards, also on failure. There is no qemu: a further namespace holding the guest's
address 192.168.1.2 / fd00:1::2, wired into virbr0 by a veth, answers in its place.
State is read back with `ip -j` and `iptables-save`, not through the code under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from control.test_daemon_kernel import Running as DaemonRunning
from control.test_daemon_kernel import ScriptedCluster, register

from net_manager.config import NetConfig
from net_manager.control.daemon import NodeDaemon, veth_names
from net_manager.node.kernel import NETNS_RUN_DIR, Kernel, KernelError
from net_manager.node.portmap import PortMapping
from oakestra_net import topics
from testsupport import nstools, wait_until

_MISSING = [
    tool for tool in ("ip", "nsenter", "unshare", "iptables", "ip6tables") if not shutil.which(tool)
]
pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(bool(_MISSING), reason=f"kernel tests need {', '.join(_MISSING)}"),
]

U1 = "U.default.U1.default"
X1 = "X.default.X1.default"
WEB = PortMapping(host_port=8080, container_port=80, protocol="tcp")


class Running(DaemonRunning):
    """A daemon serving its API on a unix socket, its unikernel namespaces prefixed."""

    def make_kernel(self, node_ns: str) -> Kernel:
        return Kernel(netns=node_ns, named_netns_prefix=f"{node_ns}-")

    def make_daemon(self, node_ns: str, config: NetConfig) -> NodeDaemon:
        # no data plane: these tests are about the namespaces, not service IPs
        return NodeDaemon(config, kernel=self.kernel, dataplane_factory=None)

    def deploy_unikernel(self, number: int, port_mappings: str = "") -> dict:
        body = {"pid": 0, "serviceName": U1, "instanceNumber": number}
        status, answer = self.call(
            "POST", "/unikernel/deploy", body | {"portMappings": port_mappings}
        )
        assert status == 200, answer
        return answer


@pytest.fixture
def ns():
    with nstools.namespaces() as tracker:
        yield tracker


def _ours(node_ns: str) -> list[str]:
    return sorted(e for e in os.listdir(NETNS_RUN_DIR) if e.startswith(f"{node_ns}-"))


@pytest.fixture
def node(ns, tmp_path, mosquitto):
    name = ns.netns()
    config = NetConfig(
        node_public_address="198.18.0.10",
        cluster_url="127.0.0.1",
        cluster_mqtt_port=mosquitto.port,
        socket_path=str(tmp_path / "netmanager.sock"),
        state_file=str(tmp_path / "state" / "state.json"),
    )
    try:
        yield name, config
    finally:
        for leftover in _ours(name):  # a failed test's unikernel namespaces
            nstools.delete_netns(leftover)


@pytest.fixture
def running(node):
    started: list[Running] = []

    def start() -> Running:
        instance = Running(*node)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def cluster(mosquitto):
    scripted = ScriptedCluster(mosquitto)
    yield scripted
    scripted.stop()


def ip_json(netns: str, *args: str):
    return json.loads(nstools.run_in(netns, ["ip", "-j", *args]).stdout or "[]")


def global_addresses(netns: str, dev: str) -> set[str]:
    [link] = ip_json(netns, "addr", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["scope"] == "global"}


def nat_rules(netns: str, tool: str) -> list[str]:
    text = nstools.run_in(netns, [f"{tool}-save", "-t", "nat"]).stdout
    return [line for line in text.splitlines() if line.startswith("-A ")]


def add_guest(ns: nstools.Namespaces, unikernel_ns: str) -> str:
    """A namespace standing in for the guest behind tap0: 192.168.1.2 / fd00:1::2."""
    guest = ns.netns()
    nstools.run_in(guest, ["sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad"])
    nstools.veth_between(
        unikernel_ns, "gst0", guest, "eth0", addresses_b=["192.168.1.2/30", "fd00:1::2/126"]
    )
    nstools.run_in(unikernel_ns, ["ip", "link", "set", "gst0", "master", "virbr0"])
    nstools.run_in(guest, ["ip", "route", "add", "default", "via", "192.168.1.1"])
    nstools.run_in(guest, ["ip", "-6", "route", "add", "default", "via", "fd00:1::1"])
    return guest


# ---- the whole life of a unikernel ----------------------------------------------------


def test_unikernel_layout_traffic_and_undeploy(running, cluster, ns, node):
    node_ns, _config = node
    daemon = running()
    register(daemon)
    answer = daemon.deploy_unikernel(0, "8080:80")
    assert answer == {"serviceName": U1, "nsAddress": "10.16.0.2", "nsAddressv6": "fc00::2"}

    # the named namespace the node engine runs qemu in, with upstream's inner layout
    unikernel_ns = f"{node_ns}-{U1}.instance.0"
    assert _ours(node_ns) == [unikernel_ns]
    assert global_addresses(unikernel_ns, "eth0") == {"10.16.0.2/26", "fc00::2/120"}
    [default_v4] = ip_json(unikernel_ns, "route", "show", "default")
    [default_v6] = ip_json(unikernel_ns, "-6", "route", "show", "default")
    assert (default_v4["gateway"], default_v6["gateway"]) == ("10.16.0.1", "fc00::1")
    [bridge] = ip_json(unikernel_ns, "-d", "link", "show", "dev", "virbr0")
    assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
    assert global_addresses(unikernel_ns, "virbr0") == {"192.168.1.1/30", "fd00:1::1/126"}
    [tap] = ip_json(unikernel_ns, "-d", "link", "show", "dev", "tap0")
    assert tap["linkinfo"]["info_data"]["type"] == "tap"
    assert tap["master"] == "virbr0" and "UP" in tap["flags"]
    assert nat_rules(unikernel_ns, "iptables") == [
        "-A PREROUTING -d 10.16.0.2/32 -i eth0 -j DNAT --to-destination 192.168.1.2",
        "-A POSTROUTING -o eth0 -j SNAT --to-source 10.16.0.2",
    ]
    assert nat_rules(unikernel_ns, "ip6tables") == [
        "-A PREROUTING -d fc00::2/128 -i eth0 -j DNAT --to-destination fd00:1::2",
        "-A POSTROUTING -o eth0 -j SNAT --to-source fc00::2",
    ]
    [lo] = ip_json(unikernel_ns, "link", "show", "dev", "lo")
    assert lo["ifalias"] == f"oakestra-net {node_ns}"
    assert daemon.kernel.list_port_mappings() == [("10.16.0.2", WEB)]

    # the cluster hears of it with the real IPv6
    wait_until(lambda: topics.SERVICE_DEPLOYED in cluster.kinds())
    # (sent again while the scripted cluster's answers leave the instance out: all equal)
    reports = [body for kind, body in cluster.published if kind == topics.SERVICE_DEPLOYED]
    deployed = reports[0]
    assert all(report == deployed for report in reports)
    assert (deployed["appname"], deployed["nsip"], deployed["nsipv6"]) == (
        U1,
        "10.16.0.2",
        "fc00::2",
    )

    # a container of the node reaches the guest by the unikernel's namespace IP, and back
    guest = add_guest(ns, unikernel_ns)
    ns.track(nstools.tcp_echo_server(guest, "::", 80, "guest"))
    client = ns.container()
    status, body = daemon.call(
        "POST",
        "/container/deploy",
        {"pid": client.pid, "serviceName": X1, "instanceNumber": 0, "portMappings": ""},
    )
    assert (status, body["nsAddress"]) == (200, "10.16.0.3"), body
    assert nstools.tcp_request(client.netns_path, "10.16.0.2", 80) == "guest 10.16.0.3"
    assert nstools.tcp_request(client.netns_path, "fc00::2", 80) == "guest fc00::3"
    ns.track(nstools.tcp_echo_server(client.netns_path, "::", 7000, "client"))
    assert nstools.tcp_request(guest, "10.16.0.3", 7000) == "client 10.16.0.2"
    assert nstools.tcp_request(guest, "fc00::3", 7000) == "client fc00::2"

    # the port mapping: from outside to the node, through both DNATs to the guest
    outside = ns.netns()
    nstools.veth_between(
        node_ns,
        "ext0",
        outside,
        "ext1",
        addresses_a=["198.18.0.1/24", "2001:db8::1/64"],
        addresses_b=["198.18.0.2/24", "2001:db8::2/64"],
    )
    assert nstools.tcp_request(outside, "198.18.0.1", 8080) == "guest 198.18.0.2"
    assert nstools.tcp_request(outside, "2001:db8::1", 8080) == "guest 2001:db8::2"

    # undeploy: namespace, veth, rules and addresses go; the cluster is told
    status, _ = daemon.call("POST", "/unikernel/undeploy", {"serviceName": U1, "instanceNumber": 0})
    assert status == 200
    assert _ours(node_ns) == []
    host_veth, _peer = veth_names(f"{U1}.0")
    assert not daemon.kernel.link_exists(host_veth)
    assert daemon.kernel.list_port_mappings() == []
    wait_until(lambda: topics.SERVICE_UNDEPLOYED in cluster.kinds())
    status = daemon.call("GET", "/status")[1]
    assert [i["instance"] for i in status["instances"]] == [f"{X1}.0"]
    repeat = daemon.call("POST", "/unikernel/undeploy", {"serviceName": U1, "instanceNumber": 0})
    assert repeat[0] == 200  # already gone: fine
    again = daemon.deploy_unikernel(0)
    assert again["nsAddress"] == "10.16.0.4"  # 10.16.0.2 was freed, to the back of the queue
    daemon.call("POST", "/unikernel/undeploy", {"serviceName": U1, "instanceNumber": 0})
    assert _ours(node_ns) == []


# ---- restart --------------------------------------------------------------------------


def test_restart_re_adopts_surviving_namespaces_and_sweeps_only_ours(running, cluster, node):
    node_ns, _config = node
    daemon = running()
    register(daemon)
    kept = daemon.deploy_unikernel(0)
    daemon.deploy_unikernel(1)
    daemon.stop()
    nstools.delete_netns(f"{node_ns}-{U1}.instance.1")  # vanishes while we are down
    with Kernel(netns=node_ns, named_netns_prefix=f"{node_ns}-") as kernel:
        kernel.ensure_named_netns("Y.default.Y1.default.instance.0")  # left by a crash
    foreign = f"{node_ns}-Z.default.Z1.default.instance.0"
    nstools.create_netns(foreign)  # not ours: must survive every sweep

    again = running()
    status = again.call("GET", "/status")[1]
    assert [(i["instance"], i["kind"]) for i in status["instances"]] == [(f"{U1}.0", "unikernel")]
    wait_until(lambda: _ours(node_ns) == sorted([f"{node_ns}-{U1}.instance.0", foreign]))
    assert again.deploy_unikernel(0) == kept  # the node engine's retry: same addresses
    assert global_addresses(f"{node_ns}-{U1}.instance.0", "virbr0") == {
        "192.168.1.1/30",
        "fd00:1::1/126",
    }

    # a sync puts back what someone removed inside the unikernel namespace
    unikernel_ns = f"{node_ns}-{U1}.instance.0"
    nstools.run_in(unikernel_ns, ["iptables", "-t", "nat", "-F"])
    nstools.run_in(unikernel_ns, ["ip", "link", "del", "tap0"])
    again.daemon.reconciler.sync()
    assert len(nat_rules(unikernel_ns, "iptables")) == 2
    [tap] = ip_json(unikernel_ns, "link", "show", "dev", "tap0")
    assert tap["master"] == "virbr0"
    assert again.call("GET", "/status")[1]["counters"]["reconciler_last_error"] is None

    # our namespace goes with the undeploy, the foreign one stays
    again.call("POST", "/unikernel/undeploy", {"serviceName": U1, "instanceNumber": 0})
    assert _ours(node_ns) == [foreign]


# ---- the kernel module ----------------------------------------------------------------


def _steady(value):
    """`ip -j -d` output minus what changes by itself (bridge timers, operstate)."""
    if isinstance(value, dict):
        return {
            k: _steady(v) for k, v in value.items() if not k.endswith("_timer") and k != "operstate"
        }
    if isinstance(value, list):
        return [_steady(item) for item in value]
    return value


def _snapshot(netns: str) -> list:
    """Links, addresses, routes, sysctls and firewall rules of a namespace."""
    text = "".join(
        nstools.run_in(netns, [tool]).stdout for tool in ("iptables-save", "ip6tables-save")
    )
    rules = [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if line[:1] != "#"]
    routes = ip_json(netns, "route", "show") + ip_json(netns, "-6", "route", "show")
    return [
        rules,
        _steady(ip_json(netns, "-d", "link", "show")),
        ip_json(netns, "addr", "show"),
        sorted(json.dumps(route, sort_keys=True) for route in routes),
        nstools.run_in(netns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout,
    ]


def test_named_namespaces_are_ours_only_when_marked_and_setup_is_idempotent(ns):
    node_ns = ns.netns()
    prefix = f"{node_ns}-"
    with Kernel(netns=node_ns, named_netns_prefix=prefix) as kernel:
        try:
            path = kernel.ensure_named_netns("A.b.C.d.instance.0")
            assert path == f"{NETNS_RUN_DIR}/{prefix}A.b.C.d.instance.0"
            assert kernel.ensure_named_netns("A.b.C.d.instance.0") == path
            assert kernel.list_named_netns() == ["A.b.C.d.instance.0"]

            # inside: a veth from the node as eth0, then the layout, twice
            nstools.run_in(
                node_ns,
                ["ip", "link", "add", "oak-h1", "type", "veth", "peer", "name", "eth0"],
            )
            nstools.run_in(node_ns, ["ip", "link", "set", "eth0", "netns", os.path.basename(path)])
            nstools.run_in(path, ["ip", "addr", "add", "10.16.0.2/26", "dev", "eth0"])
            kernel.configure_unikernel_inner(path, "eth0", "10.16.0.2", None, 1450)
            before = _snapshot(path)
            kernel.configure_unikernel_inner(path, "eth0", "10.16.0.2", None, 1450)
            assert _snapshot(path) == before
            assert nat_rules(path, "ip6tables") == []  # no IPv6 asked for, none set up

            # another node's (or nobody's) namespace is neither taken over nor deleted
            foreign = f"{prefix}A.b.C.d.instance.1"
            nstools.create_netns(foreign)
            with pytest.raises(KernelError, match="not created by this net manager"):
                kernel.ensure_named_netns("A.b.C.d.instance.1")
            assert kernel.delete_named_netns("A.b.C.d.instance.1") is False
            assert os.path.exists(f"{NETNS_RUN_DIR}/{foreign}")
            assert kernel.list_named_netns() == ["A.b.C.d.instance.0"]

            assert kernel.delete_named_netns("A.b.C.d.instance.0") is True
            assert not os.path.exists(path)
            assert kernel.delete_named_netns("A.b.C.d.instance.0") is False  # gone: fine
            for bad in ("", "../etc", "a/b", "-x", "x" * 201):
                with pytest.raises(ValueError, match="invalid namespace name"):
                    kernel.ensure_named_netns(bad)
            with pytest.raises(KernelError, match="node's own network namespace"):
                kernel.configure_unikernel_inner(
                    f"{NETNS_RUN_DIR}/{node_ns}", "eth0", "10.16.0.2", None, 1450
                )
        finally:
            for leftover in _ours(node_ns):
                nstools.delete_netns(leftover)
