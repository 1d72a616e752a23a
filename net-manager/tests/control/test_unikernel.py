"""Unikernel deployments without root: the daemon, the API and the reconciler over fakes.

The daemon creates a named namespace `<job>.instance.<n>` per unikernel and attaches it
like a container (veth, node-subnet addresses, port mappings) plus the inner layout the
node engine's qemu expects; the kernel tier (`test_unikernel_kernel.py`) checks that
layout and the traffic through it.
"""

from __future__ import annotations

import json
import os

import pytest
from nm_fakes import FakeClock, FakeKernel, FakeSession

from net_manager.api import create_app
from net_manager.config import NetConfig
from net_manager.control.daemon import DaemonError, NodeDaemon, veth_names
from net_manager.node.kernel import TUN, KernelError, netns_path_of_pid, unikernel_nat_rules
from net_manager.node.portmap import PortMapping
from net_manager.node.reconciler import ContainerSpec, DesiredState, NodeSpec, Reconciler
from oakestra_net import topics

U1 = "U.default.U1.default"
X1 = "X.default.X1.default"
U1_NETNS = f"{U1}.instance.0"
WEB = PortMapping(8080, 80, "tcp")


@pytest.fixture
def kernel(tmp_path):
    fake = FakeKernel()
    fake.run_dir = str(tmp_path / "netns")
    os.mkdir(fake.run_dir)
    fake.namespaces.add(netns_path_of_pid(os.getpid()))  # a "container" for the client
    return fake


def make_daemon(kernel: FakeKernel, state_file: str) -> NodeDaemon:
    config = NetConfig(state_file=state_file, address_watch_interval=120)
    return NodeDaemon(
        config,
        kernel=kernel,
        session_factory=FakeSession,
        dataplane_factory=None,
        clock=FakeClock(),
    )


@pytest.fixture
def daemon(kernel, tmp_path):
    node = make_daemon(kernel, str(tmp_path / "state.json"))
    node.node_ip = node._public_address()
    node.register("node-a", "127.0.0.1")
    return node


def vanish(kernel: FakeKernel, name: str) -> None:
    """The named namespace disappears behind the daemon's back (`ip netns delete`)."""
    kernel.named.discard(name)
    kernel.namespaces.discard(kernel.named_netns_path(name))
    os.unlink(kernel.named_netns_path(name))


# ---- deploy ---------------------------------------------------------------------------


def test_deploy_creates_the_named_namespace_and_attaches_it_like_a_container(daemon, kernel):
    kernel.calls.clear()

    answer = daemon.deploy_unikernel(U1, 0, "8080:80")

    assert answer == {"serviceName": U1, "nsAddress": "10.16.0.2", "nsAddressv6": "fc00::2"}
    path = kernel.named_netns_path(U1_NETNS)
    host_veth, peer_veth = veth_names(f"{U1}.0")
    assert kernel.calls == [
        ("ensure_named_netns", U1_NETNS),
        ("ensure_veth", host_veth, peer_veth, "oak-br0", 1450),
        ("move_into_container", peer_veth, path, "eth0"),
        (
            "configure_container",
            path,
            "eth0",
            "10.16.0.2/26",
            "fc00::2/120",
            "10.16.0.1",
            "fc00::1",
            1450,
        ),
        ("configure_unikernel_inner", path, "eth0", "10.16.0.2", "fc00::2", 1450),
        ("ensure_port_mapping", WEB, "10.16.0.2", "fc00::2"),
    ]
    [instance] = daemon.status()["instances"]
    assert (instance["instance"], instance["kind"]) == (f"{U1}.0", "unikernel")


def test_deploy_reports_the_real_ipv6_and_follows_the_job(daemon):
    daemon.deploy_unikernel(U1, 0, "")

    kind, message = daemon.session.published[-1]
    assert kind == topics.SERVICE_DEPLOYED
    assert json.loads(message.to_json()) == {
        "appname": U1,
        "status": "DEPLOYED",
        "instance_number": 0,
        "nsip": "10.16.0.2",
        "nsipv6": "fc00::2",  # upstream: "<nil>"
        "host_ip": "198.18.0.10",
        "host_port": "50103",
    }
    assert U1 in daemon.session.followed
    assert daemon.session.queries[-1].sname == U1


def test_deploying_the_same_unikernel_again_changes_nothing(daemon, kernel):
    first = daemon.deploy_unikernel(U1, 0, "8080:80")
    calls, published = len(kernel.calls), len(daemon.session.published)

    assert daemon.deploy_unikernel(U1, 0, "8080:80") == first

    assert len(kernel.calls) == calls
    assert len(daemon.session.published) == published


def test_a_unikernel_whose_namespace_vanished_is_deployed_afresh(daemon, kernel):
    daemon.deploy_unikernel(U1, 0, "")
    vanish(kernel, U1_NETNS)

    answer = daemon.deploy_unikernel(U1, 0, "")

    assert answer["nsAddress"] == "10.16.0.3"  # the old address went to the back
    assert kernel.named == {U1_NETNS}
    assert [i["instance"] for i in daemon.status()["instances"]] == [f"{U1}.0"]


def test_a_unikernel_replaces_a_container_of_the_same_instance(daemon, kernel):
    daemon.deploy_container(os.getpid(), U1, 0, "")
    container_veth, _ = veth_names(f"{U1}.0")

    daemon.deploy_unikernel(U1, 0, "")

    assert ("delete_link", container_veth) in kernel.calls
    [instance] = daemon.status()["instances"]
    assert instance["kind"] == "unikernel"


def test_a_failed_unikernel_attach_rolls_back_everything(daemon, kernel):
    kernel.fail["configure_unikernel_inner"] = KernelError("cannot create TAP tap0")

    with pytest.raises(DaemonError, match="cannot attach .*tap0") as refused:
        daemon.deploy_unikernel(U1, 0, "8080:80")

    assert refused.value.status == 500
    assert kernel.named == set()
    assert not os.path.exists(kernel.named_netns_path(U1_NETNS))
    assert not [link for link in kernel.links if link.startswith("oak-h")]
    assert kernel.mappings == set()
    assert daemon.status()["instances"] == []
    assert topics.SERVICE_DEPLOYED not in daemon.session.kinds()
    assert daemon.addresses.to_dict()["v4"]["free"] == [0]


def test_a_namespace_of_that_name_we_did_not_create_is_refused_and_left_alone(daemon, kernel):
    kernel.foreign_named.add(U1_NETNS)

    with pytest.raises(DaemonError, match="not created by us") as refused:
        daemon.deploy_unikernel(U1, 0, "")

    assert refused.value.status == 500
    assert ("delete_named_netns", U1_NETNS) in kernel.calls  # the rollback tried ...
    assert U1_NETNS in kernel.foreign_named  # ... and left it alone
    assert daemon.status()["instances"] == []


@pytest.mark.parametrize(
    ("job_name", "number", "mappings", "reason"),
    [
        ("U1", 0, "", "serviceName"),
        ("U.default.U-1.default", 0, "", "serviceName"),
        (U1, -1, "", "instanceNumber"),
        (U1, True, "", "instanceNumber"),
        (U1, 0, "80:80-80", "portMappings"),
    ],
)
def test_bad_deploys_are_refused_with_400_and_change_nothing(
    daemon, kernel, job_name, number, mappings, reason
):
    kernel.calls.clear()
    with pytest.raises(DaemonError, match=reason) as refused:
        daemon.deploy_unikernel(job_name, number, mappings)
    assert refused.value.status == 400
    assert kernel.calls == []


def test_deploy_before_registration_is_refused(kernel, tmp_path):
    node = make_daemon(kernel, str(tmp_path / "state.json"))
    with pytest.raises(DaemonError, match="not registered") as refused:
        node.deploy_unikernel(U1, 0, "")
    assert refused.value.status == 400


# ---- undeploy -------------------------------------------------------------------------


def test_undeploy_deletes_namespace_veth_rules_and_frees_the_addresses(daemon, kernel):
    daemon.deploy_unikernel(U1, 0, "8080:80")
    host_veth, _ = veth_names(f"{U1}.0")

    assert daemon.undeploy_unikernel(U1, 0) is True

    assert kernel.named == set()
    assert not os.path.exists(kernel.named_netns_path(U1_NETNS))
    assert host_veth not in kernel.links
    assert kernel.mappings == set()
    assert daemon.status()["instances"] == []
    assert daemon.addresses.to_dict()["v4"]["free"] == [0]
    [message] = [m for k, m in daemon.session.published if k == topics.SERVICE_UNDEPLOYED]
    assert (message.appname, message.nsip, message.nsipv6) == (U1, "10.16.0.2", "fc00::2")
    assert daemon.undeploy_unikernel(U1, 0) is False  # again: already gone, fine


# ---- restart --------------------------------------------------------------------------


def test_restart_re_adopts_unikernels_whose_namespace_survived(daemon, kernel, tmp_path):
    kept = daemon.deploy_unikernel(U1, 0, "8080:80")
    daemon.deploy_unikernel(U1, 1, "")
    vanish(kernel, f"{U1}.instance.1")  # deleted while the daemon was down

    again = make_daemon(kernel, daemon.config.state_file)
    again.start()
    again.stop()

    assert [(i["instance"], i["kind"]) for i in again.status()["instances"]] == [
        (f"{U1}.0", "unikernel")
    ]
    assert again.deploy_unikernel(U1, 0, "8080:80") == kept
    assert again.addresses.to_dict()["v4"]["free"] == [1]  # the vanished one's address
    assert kernel.named == {U1_NETNS}


# ---- HTTP API -------------------------------------------------------------------------


@pytest.fixture
def client(daemon):
    return create_app(daemon).test_client()


def test_api_deploy_and_undeploy(client, daemon, kernel):
    answer = client.post(
        "/unikernel/deploy",
        json={"pid": 0, "serviceName": U1, "instanceNumber": 0, "portMappings": "8080:80"},
    )
    assert answer.status_code == 200
    assert answer.get_json() == {
        "serviceName": U1,
        "nsAddress": "10.16.0.2",
        "nsAddressv6": "fc00::2",
    }
    assert kernel.named == {U1_NETNS}

    gone = client.post("/unikernel/undeploy", json={"serviceName": U1, "instanceNumber": 0})
    assert (gone.status_code, gone.data) == (200, b"")
    assert kernel.named == set()
    again = client.post("/unikernel/undeploy", json={"serviceName": U1, "instanceNumber": 0})
    assert again.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/unikernel/deploy", [], "JSON object"),
        ("/unikernel/deploy", {"instanceNumber": 0}, "'serviceName' is required"),
        ("/unikernel/deploy", {"serviceName": U1, "instanceNumber": "0"}, "instanceNumber"),
        ("/unikernel/deploy", {"serviceName": U1, "instanceNumber": 0, "portMappings": 80}, "str"),
        ("/unikernel/undeploy", {"serviceName": U1}, "'instanceNumber' is required"),
    ],
)
def test_api_refuses_bad_bodies_with_400(client, kernel, path, body, reason):
    answer = client.post(path, json=body)
    assert answer.status_code == 400
    assert reason in answer.get_json()["reason"]
    assert kernel.named == set()


# ---- reconciler -----------------------------------------------------------------------

NODE = NodeSpec(
    bridge="oak-br0",
    bridge_v4_cidr="10.16.0.1/26",
    bridge_v6_cidr="fc00::1/120",
    subnet_v4="10.16.0.0/26",
    subnet_v6="fc00::/120",
    mtu=1450,
    tun=TUN,
)


def unikernel_spec(kernel: FakeKernel, n: int, *mappings: PortMapping) -> ContainerSpec:
    name = f"u.ns.svc.ns.instance.{n}"
    return ContainerSpec(
        key=f"u.ns.svc.ns.{n}",
        host_veth=f"oak-h{n}",
        peer_veth=f"oak-c{n}",
        netns_path=kernel.named_netns_path(name),
        namespace_ip=f"10.16.0.{n + 1}",
        namespace_ip_v6=f"fc00::{n + 1:x}",
        port_mappings=mappings,
        named_netns=name,
    )


def test_sync_configures_a_live_unikernel_but_never_recreates_its_namespace(kernel):
    live, vanished = unikernel_spec(kernel, 1, WEB), unikernel_spec(kernel, 2)
    kernel.ensure_named_netns(live.named_netns)
    reconciler = Reconciler(kernel, lambda: DesiredState(NODE, (live, vanished)))
    kernel.calls.clear()

    reconciler.sync()

    assert ("configure_unikernel_inner", live.netns_path, "eth0", "10.16.0.2", "fc00::2", 1450) in (
        kernel.calls
    )
    assert "ensure_named_netns" not in kernel.names()
    assert kernel.named == {live.named_netns}
    assert kernel.links == {"oak-br0", "oak-h1"}
    assert reconciler.last_error is None


def test_sync_without_ipv6_configures_the_inner_layout_v4_only(kernel):
    spec = unikernel_spec(kernel, 1)
    node = NodeSpec("oak-br0", "10.16.0.1/26", None, "10.16.0.0/26", None, 1450, TUN)
    kernel.ensure_named_netns(spec.named_netns)

    Reconciler(kernel, lambda: DesiredState(node, (spec,))).sync()

    assert ("configure_unikernel_inner", spec.netns_path, "eth0", "10.16.0.2", None, 1450) in (
        kernel.calls
    )


def test_sweep_deletes_our_named_namespaces_nobody_wants(kernel):
    wanted = unikernel_spec(kernel, 1)
    kernel.ensure_named_netns(wanted.named_netns)
    kernel.ensure_named_netns("old.ns.svc.ns.instance.0")  # e.g. left by a crash
    reconciler = Reconciler(kernel, lambda: DesiredState(NODE, (wanted,)))

    reconciler.sync()

    assert kernel.named == {wanted.named_netns}
    removed = Reconciler(kernel, lambda: DesiredState(None, ())).sweep()
    assert removed[-1] == f"namespace {wanted.named_netns}"
    assert kernel.named == set()


def test_sync_container_creates_and_sync_removed_deletes_the_namespace(kernel):
    spec = unikernel_spec(kernel, 1, WEB)
    reconciler = Reconciler(kernel, lambda: DesiredState(NODE, ()))

    reconciler.sync_container(spec)
    assert kernel.named == {spec.named_netns}
    assert kernel.names().index("ensure_named_netns") < kernel.names().index("ensure_veth")

    reconciler.sync_removed(spec)
    assert kernel.named == set()
    assert kernel.links == {"oak-br0"} and kernel.mappings == set()


# ---- rules (pure) ---------------------------------------------------------------------


def test_nat_rules_send_the_namespace_ip_to_the_guest_and_the_guest_out_as_it():
    assert unikernel_nat_rules("eth0", "10.16.0.5", "192.168.1.2") == [
        (
            "PREROUTING",
            ("-d", "10.16.0.5", "-i", "eth0", "-j", "DNAT", "--to-destination", "192.168.1.2"),
        ),
        ("POSTROUTING", ("-o", "eth0", "-j", "SNAT", "--to-source", "10.16.0.5")),
    ]
