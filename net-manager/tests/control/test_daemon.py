"""Node daemon logic with fakes at its boundaries (kernel, MQTT session) and a fake clock."""

from __future__ import annotations

import os

import pytest
from nm_fakes import FakeClock, FakeDataPlane, FakeKernel, FakeSession

from net_manager.config import NetConfig
from net_manager.control.daemon import NodeDaemon
from net_manager.node.kernel import netns_path_of_pid
from oakestra_net import topics
from oakestra_net.messages import TableQueryResult

X1 = "X.default.X1.default"
X3 = "X.default.X3.default"


def instance(number: int, namespace_ip: str, instance_ip: str, node_ip: str, rr: str) -> dict:
    return {
        "instance_number": number,
        "instance_ip": instance_ip,
        "instance_ip_v6": "fdff::" + instance_ip.split(".", 2)[2].replace(".", ":"),
        "cluster_id": "c1",
        "namespace_ip": namespace_ip,
        "namespace_ip_v6": "fc00::" + namespace_ip.split(".", 2)[2].replace(".", ":"),
        "host_ip": node_ip,
        "host_port": 50103,
        "service_ip": [
            {"IpType": "RR", "Address": rr, "Address_v6": "fdff:2000::1e"},
            {
                "IpType": "instance_ip",
                "Address": instance_ip,
                "Address_v6": "fdff::" + instance_ip.split(".", 2)[2].replace(".", ":"),
            },
        ],
    }


X3_RESULT = TableQueryResult.from_json(
    {
        "app_name": X3,
        "query_key": "10.30.1.30",
        "instance_list": [instance(0, "10.16.0.66", "10.30.0.6", "198.18.0.20", "10.30.1.30")],
    }
)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def daemon(tmp_path, clock):
    kernel = FakeKernel()
    kernel.namespaces.add(netns_path_of_pid(os.getpid()))
    config = NetConfig(state_file=str(tmp_path / "state.json"), address_watch_interval=120)
    node = NodeDaemon(
        config,
        kernel=kernel,
        session_factory=FakeSession,
        dataplane_factory=FakeDataPlane,
        clock=clock,
    )
    node.node_ip = node._public_address()
    node.register("node-a", "127.0.0.1")
    return node


def test_a_remote_job_is_kept_while_used_and_dropped_10_s_after(daemon, clock):
    daemon._on_table_result(X3_RESULT)
    session = daemon.session
    assert [e.namespace_ip for e in daemon.table.by_service_ip("10.30.1.30")] == ["10.16.0.66"]
    assert X3 in session.followed
    clock.advance(9)
    daemon.mark_used(X3)
    clock.advance(9)
    daemon.tick()
    assert topics.INTEREST_REMOVE not in session.kinds()
    clock.advance(1.5)
    daemon.tick()
    assert session.published[-1][0] == topics.INTEREST_REMOVE
    assert session.published[-1][1].appname == X3
    assert X3 not in session.followed
    assert daemon.table.by_service_ip("10.30.1.30") == ()


def test_a_remote_job_outlives_10_s_while_the_data_plane_reports_use_late(daemon, clock):
    daemon._on_table_result(X3_RESULT)
    daemon.dataplane.lag = 4.0  # its kernel backend last listed conntrack 4 s ago
    clock.advance(12)
    daemon.tick()
    assert topics.INTEREST_REMOVE not in daemon.session.kinds()
    daemon.dataplane.lag = 1.0  # a listing ran: nothing used
    daemon.tick()
    assert daemon.session.published[-1][0] == topics.INTEREST_REMOVE


def test_a_local_job_is_never_dropped_while_deployed(daemon, clock):
    daemon.deploy_container(os.getpid(), X1, 0, "")
    session = daemon.session
    assert X1 in session.followed
    assert session.queries[-1].sname == X1  # learns its own instance IP from the cluster
    own = instance(0, "10.16.0.2", "10.30.0.2", "198.18.0.10", "10.30.0.1")
    daemon._on_table_result(
        TableQueryResult.from_json({"app_name": X1, "query_key": X1, "instance_list": [own]})
    )
    clock.advance(3600)
    daemon.tick()
    assert topics.INTEREST_REMOVE not in session.kinds()
    daemon.undeploy(X1, 0)
    assert session.kinds()[-1] == topics.SERVICE_UNDEPLOYED
    clock.advance(9)
    daemon.tick()
    assert topics.INTEREST_REMOVE not in session.kinds()  # kept 10 s after the last one left
    clock.advance(2)
    daemon.tick()
    assert (topics.INTEREST_REMOVE, X1) in [
        (k, getattr(m, "appname", "")) for k, m in session.published
    ]


def test_updates_available_refreshes_the_job_by_name(daemon):
    daemon._on_table_result(X3_RESULT)
    daemon.session.queries.clear()
    daemon.session.on_job_update(X3)
    assert [(q.sname, q.sip) for q in daemon.session.queries] == [(X3, "")]
    scaled = TableQueryResult.from_json(
        {
            "app_name": X3,
            "query_key": X3,
            "instance_list": [
                instance(0, "10.16.0.66", "10.30.0.6", "198.18.0.20", "10.30.1.30"),
                instance(1, "10.16.0.130", "10.30.0.7", "198.18.0.30", "10.30.1.30"),
            ],
        }
    )
    daemon._on_table_result(scaled)
    assert len(daemon.table.by_service_ip("10.30.1.30")) == 2


def test_resolving_a_service_ip_asks_the_cluster_once(daemon):
    answers = []
    daemon.resolve_service_ip("10.30.1.30", answers.append)
    daemon.resolve_service_ip("10.30.1.30", answers.append)
    assert [(q.sname, q.sip) for q in daemon.session.queries] == [("", "10.30.1.30")]
    daemon._on_table_result(X3_RESULT)
    assert answers == [True, True]


def test_public_address_change_is_reported_with_the_job_name(daemon, clock):
    daemon.deploy_container(os.getpid(), X1, 0, "")
    daemon.kernel.public_address = "198.18.0.99"
    clock.advance(121)
    daemon.tick()
    kind, message = daemon.session.published[-1]
    assert kind == topics.ADDRESS_CHANGED
    assert (message.appname, message.host_ip, message.host_port) == (X1, "198.18.0.99", "50103")
    assert daemon.status()["node_ip"] == "198.18.0.99"


def test_a_failed_attach_rolls_back_everything(daemon):
    from net_manager.node.kernel import KernelError

    daemon.kernel.fail["configure_container"] = KernelError("no such device")
    from net_manager.control.daemon import DaemonError

    with pytest.raises(DaemonError, match="cannot attach"):
        daemon.deploy_container(os.getpid(), X1, 0, "8080:80")
    assert daemon.status()["instances"] == []
    assert not [link for link in daemon.kernel.links if link.startswith("oak-h")]
    assert daemon.kernel.mappings == set()
    assert topics.SERVICE_DEPLOYED not in daemon.session.kinds()
    del daemon.kernel.fail["configure_container"]
    assert daemon.addresses.to_dict()["v4"]["free"] == [0]  # 10.16.0.2 went back, to the end
    answer = daemon.deploy_container(os.getpid(), X1, 0, "")
    assert answer["nsAddress"] == "10.16.0.3"


def test_the_data_plane_gets_the_table_before_the_answer_to_its_miss(daemon):
    dataplane = daemon.dataplane
    assert dataplane.started and dataplane.args == (
        "oak-tun0",
        "10.19.1.254/12",
        "fcef::dead:beef/7",
        1450,
        50103,
    )
    assert dataplane.flow_quota == daemon.config.flow_quota == 0.25
    daemon.deploy_container(os.getpid(), X1, 0, "")
    own = instance(0, "10.16.0.2", "10.30.0.2", "198.18.0.10", "10.30.0.1")
    daemon._on_table_result(
        TableQueryResult.from_json({"app_name": X1, "query_key": X1, "instance_list": [own]})
    )
    dataplane.on_resolve("10.30.1.30", lambda found: dataplane.events.append(f"resolved {found}"))
    daemon._on_table_result(X3_RESULT)
    assert dataplane.events[-2:] == ["snapshot", "resolved True"]
    services, local, node_ip = dataplane.snapshots[-1]
    rr = next(s for s in services if s.service_ip == "10.30.1.30")
    assert [e.namespace_ip for e in rr.endpoints] == ["10.16.0.66"]
    assert rr.endpoints[0].node_ip == "198.18.0.20"
    assert [(e.namespace_ip, e.instance_ip) for e in local] == [("10.16.0.2", "10.30.0.2")]
    assert node_ip == "198.18.0.10"
    dataplane.on_used([X3])  # a packet to X3 keeps its interest alive
    assert daemon.interests.snapshot()[X3]["idle_seconds"] == 0
    daemon.stop()
    assert dataplane.stopped


def test_a_local_jobs_query_is_asked_until_answered_and_again_after_a_reconnect(daemon, clock):
    """A lost answer must not leave the node without its own instances' service IPs."""
    daemon.deploy_container(os.getpid(), X1, 0, "")
    session = daemon.session
    asked = lambda: sum(1 for q in session.queries if q.sname == X1)  # noqa: E731
    assert asked() == 1
    for _ in range(240):  # 60 s of housekeeping, no answer
        clock.advance(0.25)
        daemon.tick()
    assert 10 <= asked() <= 30  # asked again and again, with backoff
    own = instance(0, "10.16.0.2", "10.30.0.2", "198.18.0.10", "10.30.0.1")
    daemon._on_table_result(
        TableQueryResult.from_json({"app_name": X1, "query_key": X1, "instance_list": [own]})
    )
    answered_at = asked()
    for _ in range(240):
        clock.advance(0.25)
        daemon.tick()
    assert asked() == answered_at  # answered: nothing more

    daemon._on_table_result(X3_RESULT)  # a remote job followed too
    session.queries.clear()
    session.on_ready()  # the result subscription is live again after a reconnect
    assert sorted(q.sname for q in session.queries) == [X1, X3]


def test_claims_of_one_instance_are_409_for_another(daemon):
    from net_manager.control.daemon import DaemonError

    first = daemon.deploy_container(os.getpid(), X1, 0, "8080:80")

    def refused(pid, number, ports, status, *words):
        with pytest.raises(DaemonError) as caught:
            daemon.deploy_container(pid, X1, number, ports)
        assert caught.value.status == status
        assert all(word in caught.value.reason for word in words), caught.value.reason

    refused(os.getpid(), 1, "", 409, "pid", f"{X1}.0")  # same namespace
    refused(os.getpid(), 1, "9000:80;8080", 409, "8080/tcp", f"{X1}.0")
    refused(os.getpid(), 1, "50103/udp", 409, "portMappings", "tunnel port")
    refused(os.getpid(), 1, "50104/udp", 409, "portMappings", "kernel tunnel port")
    refused(os.getpid(), 1, "10003", 409, "broker port")
    assert list(daemon.state.instances) == [f"{X1}.0"]
    assert daemon.deploy_container(os.getpid(), X1, 0, "8080:80") == first  # a retry: fine

    daemon.kernel.node_namespaces.add(netns_path_of_pid(os.getpid()))
    refused(os.getpid(), 2, "", 400, "node's own network namespace")


def test_a_local_instance_missing_from_the_answer_is_reported_again(daemon):
    """The cluster missed the report (a broker restart): it leaves the instance out of
    its answers until the node reports it again."""
    daemon.deploy_container(os.getpid(), X1, 0, "")
    session = daemon.session
    reports = session.kinds().count(topics.SERVICE_DEPLOYED)
    empty = {"app_name": X1, "query_key": X1, "instance_list": []}
    daemon._on_table_result(TableQueryResult.from_json(empty))
    assert session.kinds().count(topics.SERVICE_DEPLOYED) == reports + 1
    assert session.published[-1][1].instance_number == 0
    (attached,) = daemon.status()["instances"]
    own = instance(0, attached["namespace_ip"], "10.30.0.2", "198.18.0.10", "10.30.0.1")
    listed = {"app_name": X1, "query_key": X1, "instance_list": [own]}
    daemon._on_table_result(TableQueryResult.from_json(listed))
    assert session.kinds().count(topics.SERVICE_DEPLOYED) == reports + 1  # listed: not again
