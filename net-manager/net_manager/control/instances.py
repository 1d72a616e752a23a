"""Instances on this node: attaching containers and unikernels, detaching them.

Deploy validates the call, takes namespace IPs, records the instance (saved to the state
file) and has the reconciler wire it at once, answering with the result; undeploy and
a dead instance's cleanup release it again. Every change is reported to the cluster.

What one instance claims is refused for another (409, the first keeps what it has): its
network namespace (a second instance there would replace the first's addresses) and
its host ports. The ports the node itself uses (tunnel, kernel tunnel, API, broker) are
never mapped.
A container in the node's own namespace (host networking) is refused with 400.
"""

from __future__ import annotations

import hashlib
import os

from net_manager.control.addresses import AddressesExhausted
from net_manager.control.statefile import Instance, instance_key
from net_manager.node import tunnel
from net_manager.node.kernel import KernelError, netns_path_of_pid
from net_manager.node.portmap import InvalidPortMapping, parse_port_mappings
from net_manager.node.reconciler import ContainerSpec
from oakestra_net import topics
from oakestra_net.http_errors import ApiError
from oakestra_net.log import get_logger
from oakestra_net.messages import (
    ServiceDeployed,
    ServiceUndeployed,
)
from oakestra_net.names import InvalidName, parse_job_name

log = get_logger("net_manager.control.daemon")


class DaemonError(ApiError):
    """A call the daemon refuses; `status` is the HTTP status the API answers with.

    The node engine has always been answered `{"error": "refused", "reason"}`.
    """

    label = "refused"


def veth_names(key: str) -> tuple[str, str]:
    """Stable per-instance device names, so a restarted daemon finds its veths again."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"oak-h{digest}", f"oak-c{digest}"


def unikernel_netns_name(job_name: str, instance_number: int) -> str:
    """The named namespace of a unikernel: the node engine runs its qemu in it."""
    return f"{job_name}.instance.{instance_number}"


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


class Instances:
    """NodeDaemon's calls of the node engine about instances (see the module doc)."""

    def deploy_container(
        self, pid: int, job_name: str, instance_number: int, port_mappings: str
    ) -> dict[str, str]:
        session = self._require_registration()
        _check_job(job_name, instance_number)
        mappings = _check_port_mappings(port_mappings)
        self._check_node_ports(mappings)
        netns_path = self._netns_of(pid)
        key = instance_key(job_name, instance_number)
        with self.lock:
            current = self.state.instances.get(key)
            try:
                inode = netns_inode(netns_path)
            except OSError:
                raise DaemonError(400, f"pid {pid}: the process is gone") from None
            if current is not None and current.netns_inode == inode:
                return _answer(current)
            self._check_claims(key, mappings, inode)
            if current is not None:  # same instance, new container: replace it
                self._detach(current, publish=False)
            instance = self._attach(key, job_name, instance_number, netns_path, port_mappings)
        log.info(
            "container attached",
            instance=key,
            namespace_ip=instance.namespace_ip,
            port_mappings=[m.host_port for m in mappings],
        )
        session.publish(topics.SERVICE_DEPLOYED, self._report(ServiceDeployed, instance))
        self._follow_local(job_name)
        return _answer(instance)

    def _netns_of(self, pid: int) -> str:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise DaemonError(400, f"pid must be a positive integer, got {pid!r}")
        try:
            netns_path = netns_path_of_pid(pid)
            own = self.kernel.is_node_namespace(netns_path)
        except KernelError as err:
            raise DaemonError(400, f"no network namespace for pid {pid}: {err}") from None
        if own:
            raise DaemonError(
                400,
                f"pid {pid} runs in the node's own network namespace (host networking?): "
                "only a container with a namespace of its own can be attached",
            )
        return netns_path

    def _node_ports(self) -> dict[int, str]:
        """Ports the node itself uses; no container may take them (either protocol)."""
        config = self.config
        ports = {
            config.cluster_mqtt_port: "broker port",
            config.tun.tunnel_port: "tunnel port",
            config.node_public_port: "tunnel port",
        }
        if config.tcp_port:
            ports[config.tcp_port] = "API port"
        if config.tun.tunnel_port < 65535:  # the kernel tunnel (VXLAN) between our nodes
            ports[tunnel.port_of(config.tun.tunnel_port)] = "kernel tunnel port"
        return ports

    def _check_node_ports(self, mappings) -> None:
        reserved = self._node_ports()
        for mapping in mappings:
            if mapping.host_port in reserved:
                raise DaemonError(
                    409,
                    f"portMappings: host port {mapping.host_port} is this node's "
                    f"{reserved[mapping.host_port]}; choose another host port",
                )

    def _check_claims(self, key: str, mappings, inode: int | None) -> None:
        """409 if another instance holds this namespace (inode) or one of these host ports.
        Caller holds the lock."""
        wanted = {(m.host_port, m.protocol): m for m in mappings}
        others = [other for other in self.state.instances.values() if other.key != key]
        for other in others:
            for taken in parse_port_mappings(other.port_mappings):
                clash = wanted.get((taken.host_port, taken.protocol))
                if clash is not None:
                    raise DaemonError(
                        409,
                        f"portMappings: host port {clash.host_port}/{clash.protocol} is "
                        f"already mapped to instance {other.key}",
                    )
        for other in others:
            if inode is not None and other.netns_inode == inode and is_alive(other):
                raise DaemonError(
                    409,
                    f"pid: that network namespace already belongs to instance {other.key}; "
                    "one instance per container",
                )

    def _attach(
        self, key, job_name, number, netns_path, port_mappings, kind="container"
    ) -> Instance:
        assert self.addresses is not None
        try:
            namespace_ip, namespace_ip_v6 = self.addresses.take()
        except AddressesExhausted as err:
            raise DaemonError(503, str(err)) from None
        host_veth, peer_veth = veth_names(key)
        instance = Instance(
            job_name=job_name,
            instance_number=number,
            kind=kind,
            netns_path=netns_path,
            netns_inode=netns_inode(netns_path) if kind == "container" else 0,
            namespace_ip=namespace_ip,
            namespace_ip_v6=namespace_ip_v6,
            host_veth=host_veth,
            peer_veth=peer_veth,
            port_mappings=port_mappings,
        )
        self.state.instances[key] = instance
        try:
            self.reconciler.sync_container(spec_of(instance))
        except KernelError as err:
            self._forget(instance)
            self.reconciler.sync_removed(spec_of(instance))
            raise DaemonError(500, f"cannot attach {key}: {err}") from None
        if kind == "unikernel":  # its namespace exists only now
            instance.netns_inode = netns_inode(netns_path)
        self._save()
        return instance

    def undeploy(self, job_name: str, instance_number: int) -> bool:
        """Detach an instance; an unknown one is fine (already gone)."""
        self._require_registration()
        with self.lock:
            instance = self.state.instances.get(instance_key(job_name, instance_number))
            if instance is None:
                return False
            self._detach(instance, publish=True)
        return True

    def deploy_unikernel(
        self, job_name: str, instance_number: int, port_mappings: str
    ) -> dict[str, str]:
        """Create the unikernel's named namespace (virbr0, tap0, NAT to the guest) and
        attach it like a container; the node engine then starts qemu inside it."""
        session = self._require_registration()
        _check_job(job_name, instance_number)
        mappings = _check_port_mappings(port_mappings)
        self._check_node_ports(mappings)
        key = instance_key(job_name, instance_number)
        netns_path = self._named_netns_path(unikernel_netns_name(job_name, instance_number))
        with self.lock:
            current = self.state.instances.get(key)
            if current is not None and current.kind == "unikernel" and is_alive(current):
                return _answer(current)
            self._check_claims(key, mappings, None)
            if current is not None:  # a container of that instance, or a vanished namespace
                self._detach(current, publish=False)
            instance = self._attach(
                key, job_name, instance_number, netns_path, port_mappings, kind="unikernel"
            )
        log.info("unikernel attached", instance=key, namespace=netns_path)
        session.publish(topics.SERVICE_DEPLOYED, self._report(ServiceDeployed, instance))
        self._follow_local(job_name)
        return _answer(instance)

    def _named_netns_path(self, name: str) -> str:
        try:
            return self.kernel.named_netns_path(name)
        except ValueError as err:
            raise DaemonError(400, str(err)) from None

    def undeploy_unikernel(self, job_name: str, instance_number: int) -> bool:
        """Detach a unikernel: its namespace, veth, port rules and addresses go."""
        return self.undeploy(job_name, instance_number)

    def _detach(self, instance: Instance, *, publish: bool) -> None:
        self._forget(instance)
        try:
            self.reconciler.sync_removed(spec_of(instance))
        except KernelError as err:
            log.warning(
                "detach left kernel state behind; the reconciler will retry",
                instance=instance.key,
                reason=str(err),
            )
            self.reconciler.poke()
        self._save()
        self.table.remove_namespace_ip(instance.namespace_ip)
        local = self._local_count(instance.job_name)
        self.interests.set_local(instance.job_name, local)
        if publish and self.session is not None:
            self.session.publish(
                topics.SERVICE_UNDEPLOYED, self._report(ServiceUndeployed, instance)
            )
        if local == 0 and not self.interests.is_interested(instance.job_name):
            self._drop_job(instance.job_name)
        log.info("instance detached", instance=instance.key)
        self._table_changed()

    def _forget(self, instance: Instance) -> None:
        self.state.instances.pop(instance.key, None)
        if self.addresses is not None:
            self.addresses.give_back(instance.namespace_ip, instance.namespace_ip_v6)

    def _local_count(self, job_name: str) -> int:
        return sum(1 for i in self.state.instances.values() if i.job_name == job_name)

    def _report(self, cls, instance: Instance):
        return cls(
            appname=instance.job_name,
            instance_number=instance.instance_number,
            nsip=instance.namespace_ip,
            nsipv6=instance.namespace_ip_v6,
            host_ip=self.node_ip,
            host_port=str(self.config.node_public_port),
            **({"status": "DEPLOYED"} if cls is ServiceDeployed else {}),
        )


def spec_of(instance: Instance) -> ContainerSpec:
    return ContainerSpec(
        key=instance.key,
        host_veth=instance.host_veth,
        peer_veth=instance.peer_veth,
        netns_path=instance.netns_path,
        namespace_ip=instance.namespace_ip,
        namespace_ip_v6=instance.namespace_ip_v6,
        port_mappings=parse_port_mappings(instance.port_mappings),
        named_netns=(
            unikernel_netns_name(instance.job_name, instance.instance_number)
            if instance.kind == "unikernel"
            else None
        ),
    )


def is_alive(instance: Instance) -> bool:
    try:
        return netns_inode(instance.netns_path) == instance.netns_inode
    except OSError:
        return False


def _check_job(job_name: str, instance_number: int) -> None:
    try:
        parse_job_name(job_name)
    except InvalidName as err:
        raise DaemonError(400, f"serviceName: {err}") from None
    if isinstance(instance_number, bool) or not isinstance(instance_number, int):
        raise DaemonError(400, "instanceNumber must be an integer")
    if instance_number < 0:
        raise DaemonError(400, "instanceNumber must be >= 0")


def _check_port_mappings(text: str):
    if not isinstance(text, str):
        raise DaemonError(400, "portMappings must be a string like '8080:80;9000/udp'")
    try:
        return parse_port_mappings(text)
    except InvalidPortMapping as err:
        raise DaemonError(400, f"portMappings: {err}") from None


def _answer(instance: Instance) -> dict[str, str]:
    return {
        "serviceName": instance.job_name,
        "nsAddress": instance.namespace_ip,
        "nsAddressv6": instance.namespace_ip_v6,
    }
