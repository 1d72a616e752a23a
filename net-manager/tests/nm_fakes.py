"""Fakes at the node daemon's boundaries, shared by its pure tests."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from net_manager.dataplane.backend import DataPlaneOptions
from net_manager.node.kernel import InterfaceNotFound, KernelError, NamespaceNotFound
from net_manager.node.portmap import PortMapping


class FakeKernel:
    """The kernel module's interface over sets; records calls; can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.links: set[str] = set()
        # End state, for tests that assert what the kernel holds rather than the calls.
        self.sysctls = False
        self.bridges: dict[str, tuple] = {}  # name -> (v4_cidr, v6_cidr, mtu)
        self.base_rules: tuple | None = None  # (bridge, tun, subnet_v4, subnet_v6)
        self.veths: dict[str, tuple] = {}  # host side -> (peer, bridge, mtu)
        self.moved: dict[str, tuple] = {}  # peer -> (netns_path, name inside)
        self.interfaces: dict[str, tuple] = {}  # netns_path -> (ifname, v4, v6, gw4, gw6, mtu)
        self.mappings: set[tuple[str, PortMapping]] = set()
        self.namespaces: set[str] = set()
        self.named: set[str] = set()  # named namespaces we created (unikernels)
        self.foreign_named: set[str] = set()  # named namespaces someone else created
        # Where named namespaces "live"; a test pointing it at a directory gets a file per
        # namespace there, so the daemon can stat it (its inode stands for the namespace).
        self.run_dir = "/nonexistent/oakt-fake-netns"
        self.fail: dict[str, Exception] = {}
        self.node_namespaces: set[str] = set()  # namespaces that count as the node's own
        self.tunnel = None  # the TunnelSpec last ensured

    def _call(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def _require_ns(self, path: str) -> None:
        if path not in self.namespaces:
            raise NamespaceNotFound(f"network namespace {path} not found")

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def ensure_sysctls(self):
        self._call("ensure_sysctls")
        self.sysctls = True

    def ensure_bridge(self, name, v4_cidr, v6_cidr, mtu):
        self._call("ensure_bridge", name, v4_cidr, v6_cidr, mtu)
        self.links.add(name)
        self.bridges[name] = (v4_cidr, v6_cidr, mtu)

    def ensure_base_rules(self, bridge, tun, subnet_v4, subnet_v6):
        self._call("ensure_base_rules", bridge, tun, subnet_v4, subnet_v6)
        self.base_rules = (bridge, tun, subnet_v4, subnet_v6)

    def ensure_veth(self, host_name, peer_name, bridge, mtu):
        self._call("ensure_veth", host_name, peer_name, bridge, mtu)
        if bridge not in self.links:  # as the real one: the bridge must exist first
            raise InterfaceNotFound(f"cannot attach {host_name} to {bridge}: no such bridge")
        self.links.add(host_name)
        self.veths[host_name] = (peer_name, bridge, mtu)

    def move_into_container(self, peer_name, netns_path, new_name="eth0"):
        self._call("move_into_container", peer_name, netns_path, new_name)
        self._require_ns(netns_path)
        self.moved[peer_name] = (netns_path, new_name)

    def configure_container(self, netns_path, ifname, v4_cidr, v6_cidr, gw_v4, gw_v6, mtu):
        self._call("configure_container", netns_path, ifname, v4_cidr, v6_cidr, gw_v4, gw_v6, mtu)
        self._require_ns(netns_path)
        self.interfaces[netns_path] = (ifname, v4_cidr, v6_cidr, gw_v4, gw_v6, mtu)

    def ensure_port_mapping(self, mapping, namespace_ip, namespace_ip_v6=None):
        self._call("ensure_port_mapping", mapping, namespace_ip, namespace_ip_v6)
        self.mappings.add((namespace_ip, mapping))

    def delete_port_mapping(self, mapping, namespace_ip, namespace_ip_v6=None):
        self._call("delete_port_mapping", mapping, namespace_ip)
        self.mappings.discard((namespace_ip, mapping))

    def list_port_mappings(self):
        return sorted(self.mappings, key=str)

    def delete_link(self, name):
        self._call("delete_link", name)
        self.links.discard(name)

    def list_links(self, prefix="oak-"):
        return sorted(name for name in self.links if name.startswith(prefix))

    def namespace_exists(self, netns_path):
        return netns_path in self.namespaces

    def ensure_tunnel(self, spec):  # not in `calls`: every sync makes one of these
        self.tunnel = spec
        self.links.add(spec.device)

    def delete_tunnel(self, device="oak-vx0", bridge=None):
        self.tunnel = None
        self.links.discard(device)

    def is_node_namespace(self, netns_path):
        return netns_path in self.node_namespaces

    def named_netns_path(self, name):
        if not name or "/" in name:
            raise ValueError(f"invalid namespace name {name!r}")
        return os.path.join(self.run_dir, name)

    def ensure_named_netns(self, name):
        self._call("ensure_named_netns", name)
        if name in self.foreign_named:
            raise KernelError(f"network namespace {name} exists but was not created by us")
        path = self.named_netns_path(name)
        if name not in self.named and os.path.isdir(self.run_dir):
            open(path, "w").close()
        self.named.add(name)
        self.namespaces.add(path)
        return path

    def delete_named_netns(self, name):
        self._call("delete_named_netns", name)
        if name not in self.named:
            return False
        path = self.named_netns_path(name)
        self.named.discard(name)
        self.namespaces.discard(path)
        if os.path.exists(path):
            os.unlink(path)
        return True

    def list_named_netns(self):
        return sorted(self.named)

    def configure_unikernel_inner(self, netns_path, uplink, namespace_ip, namespace_ip_v6, mtu):
        self._call(
            "configure_unikernel_inner", netns_path, uplink, namespace_ip, namespace_ip_v6, mtu
        )
        self._require_ns(netns_path)

    # what the node daemon uses beyond the reconciler
    public_address = "198.18.0.10"

    def default_route_address(self, interface=None):
        self._call("default_route_address", interface)
        return self.public_address

    def close(self):
        pass


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSession:
    """The node's MQTT session without a broker: records what the daemon publishes."""

    def __init__(
        self, config, node_id, *, on_table_result, on_job_update, on_ready=None, subnet=None
    ):
        from oakestra_net.messages import SubnetResult

        self.node_id = node_id
        self.on_table_result = on_table_result
        self.on_job_update = on_job_update
        self.on_ready = on_ready
        self.subnet = subnet or SubnetResult(address="10.16.0.0", addressv6="fc00::")
        self.published: list[tuple[str, object]] = []
        self.queries: list = []
        self.followed: set[str] = set()
        self.connected = True

    def start(self):
        pass

    def stop(self):
        self.connected = False

    def stats(self):
        return {"published": len(self.published)}

    def request_subnet(self, timeout):
        return self.subnet

    def publish(self, kind, message):
        self.published.append((kind, message))

    def query(self, request):
        self.queries.append(request)

    def follow_job(self, job_name):
        self.followed.add(job_name)

    def unfollow_job(self, job_name):
        self.followed.discard(job_name)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.published]


class FakeDataPlane:
    """The data plane supervisor's interface: records snapshots, answers resolves later."""

    def __init__(self, options: DataPlaneOptions):
        self.options = options
        self.args = (options.tun_name, options.tun_v4_cidr, options.tun_v6_cidr, options.mtu,
                     options.port)  # fmt: skip
        self.vxlan = options.vxlan
        self.peer_capabilities: dict[str, int] = {}
        self.flow_quota = options.flow_quota
        self.on_resolve = options.on_resolve
        self.on_used = options.on_used
        self.snapshots: list[tuple[list, list, str]] = []
        self.events: list[str] = []
        self.rtt: dict[str, float] = {}
        self.lag = 0.0
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def push_snapshot(self, services, local_instances, node_ip):
        self.snapshots.append((services, local_instances, node_ip))
        self.events.append("snapshot")

    def counters(self):
        return {"packets_out": 0}

    def use_lag(self):
        return self.lag


if TYPE_CHECKING:  # mypy (make lint): the real kernel and the fake offer the same interface
    from net_manager.dataplane.backend import DataPlaneBackend, DataPlaneFactory
    from net_manager.dataplane.supervisor import DataPlaneSupervisor
    from net_manager.node.kernel import Kernel, KernelApi

    def _kernels_fit(real: Kernel, fake: FakeKernel) -> tuple[KernelApi, KernelApi]:
        return real, fake

    def _dataplanes_fit(
        real: DataPlaneSupervisor, fake: FakeDataPlane
    ) -> tuple[DataPlaneBackend, DataPlaneBackend]:
        return real, fake

    _FACTORIES: tuple[DataPlaneFactory, DataPlaneFactory] = (DataPlaneSupervisor, FakeDataPlane)
