"""The local cluster's pure parts (no root): its topology, Oakestra's payloads, the status
table, progress lines, and the namespace socket factory's refusal of our own namespace."""

from __future__ import annotations

import io

import pytest

from testbed.cluster import node_id_of
from testbed.credentials import SHIPPED_CONF, broker_config
from testbed.nsnet import NetnsError, NetnsSockets
from testbed.orchestrator import deployment_descriptor
from testbed.processes import Progress
from testbed.run import short_name
from testbed.status import Snapshot, metric, parse_metrics, render
from testbed.topology import PREFIXES, RUN_PREFIX, Container, Node, Topology, local_cluster


def test_local_cluster_topology() -> None:
    topology = local_cluster("oakr-ab12-", workers=2)
    assert topology.namespaces == [
        "oakr-ab12-ul",
        "oakr-ab12-infra",
        "oakr-ab12-w1",
        "oakr-ab12-w2",
    ]
    infra, w1, w2 = topology.nodes
    assert (infra.underlay_ip, w1.underlay_ip, w2.underlay_ip) == (
        "198.18.0.254", "198.18.0.1", "198.18.0.2",
    )  # fmt: skip
    assert not any(node.bridge for node in topology.nodes)
    # a net manager deletes every "oak…" link it does not own in its namespace
    assert not w1.uplink.startswith("oak") and not w2.uplink.startswith("oak")
    assert RUN_PREFIX in PREFIXES  # make clean sweeps make run's leftovers


def test_local_cluster_refuses_odd_sizes_and_containers_on_bridgeless_nodes() -> None:
    with pytest.raises(ValueError, match="1-200 workers"):
        local_cluster("oakr-ab12-", workers=0)
    with pytest.raises(ValueError, match="has no bridge"):
        Topology(
            "oakr-x-",
            (Node("w1", "198.18.0.1", bridge=False),),
            (Container("c1", "w1", "10.16.0.2", "fc00::2"),),
        )
    with pytest.raises(ValueError, match="needs both subnets"):
        Topology("oakt-x-", (Node("n1", "198.18.0.1"),))


def test_node_ids_look_like_oakestras() -> None:
    assert node_id_of(1) == "663000000000000000000001"
    assert len({node_id_of(i) for i in range(1, 300)}) == 299
    assert all(len(node_id_of(i)) == 24 for i in (1, 255, 256))


def test_descriptor_is_what_the_system_manager_sends() -> None:
    chosen = deployment_descriptor(
        "X", "X3", "6630aaaaaaaaaaaaaaaaaaaa", "6630bbbbbbbbbbbbbbbbbbbb",
        {"rr_ip": "10.30.1.30", "rr_ip_v6": "fdff:2000::30"},
    )  # fmt: skip
    assert chosen["job_name"] == "X.default.X3.default"
    assert (chosen["service_name"], chosen["service_ns"]) == ("X3", "default")
    assert (chosen["microservice_name"], chosen["microservice_namespace"]) == ("X3", "default")
    assert (chosen["app_name"], chosen["app_ns"]) == ("X", "default")
    assert (chosen["RR_ip"], chosen["RR_ip_v6"]) == ("10.30.1.30", "fdff:2000::30")
    assert chosen["addresses"] == {"rr_ip": "10.30.1.30", "rr_ip_v6": "fdff:2000::30"}
    assert chosen["instance_list"] == [] and chosen["virtualization"] == "docker"
    plain = deployment_descriptor("X", "X2", "a" * 24, "b" * 24, None)
    assert "RR_ip" not in plain and "addresses" not in plain


METRICS = """# HELP oakestra_pool_used addresses reserved
# TYPE oakestra_pool_used gauge
oakestra_pool_used{pool="service_v4"} 11.0
oakestra_pool_used{pool="subnet_v4"} 2.0
oakestra_http_requests_total{endpoint="net.table_query_by_ip",method="GET",status="200"} 3.0
oakestra_http_requests_total{endpoint="net.table_query_by_ip",method="GET",status="404"} 1.0
oakestra_outbox_depth 0.0
"""


def test_metrics_are_parsed_and_summed_by_label() -> None:
    samples = parse_metrics(METRICS)
    assert metric(samples, "oakestra_pool_used", pool="service_v4") == 11
    assert metric(samples, "oakestra_http_requests_total", endpoint="net.table_query_by_ip") == 4
    assert metric(samples, "oakestra_http_requests_total", status="404") == 1
    assert metric(samples, "oakestra_outbox_depth") == 0
    assert metric(samples, "nothing_like_it") == 0


def _node_status() -> dict:
    return {
        "subnet": "10.16.0.0",
        "broker_connected": True,
        "dataplane_mode": "kernel",
        "instances": [{"instance": "X.default.X1.default.0"}],
        "table": [{}, {}, {}],
        "interests": {
            "X.default.X1.default": {"local": 1, "idle_seconds": 30.0},
            "X.default.X3.default": {"local": 0, "idle_seconds": 4.2},
        },
        "counters": {"dataplane": {"flows": 2, "packets_in": 10, "packets_out": 12,
                                   "tunnel_packets_sent": 3, "gso_frames_sent": 4,
                                   "tunnel_packets_received": 6, "misses": 1}},
    }  # fmt: skip


def test_status_table_shows_nodes_managers_and_a_node_that_is_down() -> None:
    snapshot = Snapshot(
        0.0,
        nodes=[
            {"name": "w1", "address": "198.18.0.1", "status": _node_status()},
            {"name": "w2", "address": "198.18.0.2", "error": "connection refused"},
        ],
        root={"health": {"status": "ok", "outbox_depth": 0}, "metrics": parse_metrics(METRICS)},
        cluster={"error": "not answering (Connection refused)"},
    )
    text = render(snapshot)
    w1 = next(line for line in text.splitlines() if line.startswith("w1"))
    assert w1.split() == ["w1", "198.18.0.1", "10.16.0.0/26", "up", "kernel", "X1.0", "3", "X1*",
                          "X3(4s)", "2", "10/12", "7/6", "1"]  # fmt: skip
    assert "DOWN: connection refused" in text
    assert "service IPs in use 11, node subnets 2, outbox 0" in text
    assert "table queries by name/IP 0/4" in text
    assert "cluster service manager  not answering (Connection refused)" in text


def test_progress_lines() -> None:
    out = io.StringIO()
    progress = Progress(out)
    with progress.step("starting mosquitto"):
        pass
    with pytest.raises(RuntimeError), progress.step("starting the root"):
        raise RuntimeError("no")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("starting mosquitto… ok (") and lines[0].endswith(" s)")
    assert lines[1].startswith("starting the root… FAILED (")
    Progress(None).say("nothing happens")


def test_short_names() -> None:
    assert short_name("X.default.X1.default.0") == "X1.0"
    assert short_name("odd") == "odd"


def test_namespace_sockets_refuse_our_own_namespace() -> None:
    with pytest.raises(NetnsError, match="own namespace"):
        NetnsSockets("/proc/self/ns/net")


def test_the_run_broker_is_the_shipped_one_with_tls_and_a_local_console(tmp_path) -> None:
    text = broker_config(SHIPPED_CONF.read_text(), tmp_path, 10004)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "per_listener_settings true"
    secured = lines.index("listener 10003")
    assert lines[secured + 1 : secured + 4] == [
        f"cafile {tmp_path / 'ca.crt'}",
        f"certfile {tmp_path / 'server.crt'}",
        f"keyfile {tmp_path / 'server.key'}",
    ]
    files = [f"password_file {tmp_path / 'passwd'}", f"acl_file {tmp_path / 'acl'}"]
    for setting in ["allow_anonymous false", "use_username_as_clientid true", *files]:
        assert secured < lines.index(setting) < lines.index("listener 10004 127.0.0.1")
    assert lines[-2:] == ["listener 10004 127.0.0.1", "allow_anonymous true"]
