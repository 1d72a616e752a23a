"""The node daemon: what the node engine's calls and the cluster's messages change.

Handlers here only record desired state (registration, attached instances, table,
interests) and hand kernel work to the reconciler; the data plane gets table
snapshots through `on_table_change` listeners and calls back `resolve_service_ip`
and `mark_used`. Every change of registration or instances is saved to the state
file, so a restarted daemon re-adopts live containers.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from net_manager.config import NetConfig
from net_manager.control import statefile
from net_manager.control.addresses import AddressesExhausted, ContainerAddresses
from net_manager.control.services.interests import Interests
from net_manager.control.services.queries import TableQueries
from net_manager.control.services.table import TableEntry, TranslationTable
from net_manager.control.session import NodeSession
from net_manager.control.statefile import Instance, NodeState, instance_key
from net_manager.dataplane.backend import DataPlaneBackend, DataPlaneFactory
from net_manager.dataplane.core.translate import Endpoint, ServiceEntry, build_snapshot
from net_manager.dataplane.supervisor import DataPlaneSupervisor
from net_manager.node.kernel import BRIDGE, Kernel, KernelApi, KernelError, netns_path_of_pid
from net_manager.node.portmap import InvalidPortMapping, parse_port_mappings
from net_manager.node.reconciler import ContainerSpec, DesiredState, NodeSpec, Reconciler
from oakestra_net import topics
from oakestra_net.addressing import bridge_address
from oakestra_net.log import get_logger
from oakestra_net.messages import (
    AddressChanged,
    InterestRemove,
    ServiceDeployed,
    ServiceUndeployed,
    TableQueryRequest,
    TableQueryResult,
)
from oakestra_net.mqtt import MqttConfig
from oakestra_net.names import InvalidName, is_valid_job_name, parse_job_name

log = get_logger(__name__)

REGISTER_BUDGET_SECONDS = 8.0  # the node engine gives up after 10 s
HOUSEKEEPING_SECONDS = 0.5


class DaemonError(Exception):
    """A call the daemon refuses; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def veth_names(key: str) -> tuple[str, str]:
    """Stable per-instance device names, so a restarted daemon finds its veths again."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"oak-h{digest}", f"oak-c{digest}"


def unikernel_netns_name(job_name: str, instance_number: int) -> str:
    """The named namespace of a unikernel: the node engine runs its qemu in it."""
    return f"{job_name}.instance.{instance_number}"


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


class NodeDaemon:
    def __init__(
        self,
        config: NetConfig,
        *,
        kernel: KernelApi | None = None,
        session_factory: Callable[..., NodeSession] = NodeSession,
        dataplane_factory: DataPlaneFactory | None = DataPlaneSupervisor,
        netns_exec: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`dataplane_factory` None runs without a data plane (tests of the control side);
        `netns_exec` prefixes the data plane's command (a daemon managing another
        namespace, as in the kernel tests)."""
        self.config = config
        self.kernel = kernel or Kernel()
        self._session_factory = session_factory
        self.clock = clock
        self.lock = threading.RLock()
        self.state: NodeState = statefile.load(config.state_file)
        self.addresses: ContainerAddresses | None = None
        self.session: NodeSession | None = None
        self.node_ip = ""
        self.table = TranslationTable()
        self.interests = Interests(clock=clock, idle_timeout=config.interest_timeout)
        self.queries = TableQueries(
            self._send_query, clock=clock, timeout=config.table_query_timeout
        )
        self.reconciler = Reconciler(
            self.kernel, self.desired, min_interval=0.2, max_interval=config.reconcile_interval
        )
        self._dataplane_factory = dataplane_factory
        self._netns_exec = netns_exec
        self.dataplane: DataPlaneBackend | None = None
        self.table_listeners: list[Callable[[], None]] = [self._push_snapshot]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_address_check = clock() + config.address_watch_interval

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self.node_ip = self._public_address()
        if self.state.node_id:
            self._resume()
        self.reconciler.start()
        self._spawn("housekeeping", self._housekeeping)

    def stop(self) -> None:
        self._stop.set()
        self.reconciler.stop()
        if self.dataplane is not None:
            self.dataplane.stop()
        if self.session is not None:
            self.session.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _public_address(self) -> str:
        if self.config.node_public_address not in ("", "0.0.0.0"):
            return self.config.node_public_address
        try:
            return self.kernel.default_route_address(self.config.default_interface or None)
        except KernelError as err:
            raise DaemonError(500, f"cannot find this node's public address: {err}") from None

    def _resume(self) -> None:
        """Back after a restart: reconnect, re-adopt live containers, forget dead ones."""
        state = self.state
        log.info("resuming", node_id=state.node_id, subnet=state.subnet_v4)
        self.addresses = ContainerAddresses(state.subnet_v4, state.subnet_v6)
        if state.addresses:
            self.addresses.load(state.addresses)
        for key, instance in list(state.instances.items()):
            if not _alive(instance):
                log.warning("container gone while we were down", instance=key)
                del state.instances[key]
                self.addresses.give_back(instance.namespace_ip, instance.namespace_ip_v6)
        self._connect(state.cluster_url)
        for instance in state.instances.values():
            self._follow_local(instance.job_name)
        self._save()
        self._start_dataplane()

    # -- registration ---------------------------------------------------------

    def register(self, client_id: str, cluster_address: str) -> None:
        with self.lock:
            if self.state.node_id:
                if self.state.node_id == client_id:
                    return
                raise DaemonError(400, f"already registered as node {self.state.node_id}")
            try:
                topics.node_topic(client_id, topics.SUBNET)
            except topics.InvalidTopic as err:
                raise DaemonError(400, f"client_id is not usable as a node id: {err}") from None
            cluster_url = cluster_address or self.config.cluster_url
            session = self._connect(cluster_url, client_id)
            subnet = session.request_subnet(REGISTER_BUDGET_SECONDS)
            if subnet is None or not subnet.address or not subnet.addressv6:
                self.session = None
                session.stop()
                raise DaemonError(
                    503,
                    f"the cluster at {cluster_url}:{self.config.cluster_mqtt_port} did not "
                    f"hand out a subnet within {REGISTER_BUDGET_SECONDS:.0f} s; retry later",
                )
            self.state.node_id, self.state.cluster_url = client_id, cluster_url
            self.state.subnet_v4, self.state.subnet_v6 = subnet.address, subnet.addressv6
            self.addresses = ContainerAddresses(subnet.address, subnet.addressv6)
            self._save()
        log.info("registered", node_id=client_id, subnet=subnet.address, subnet_v6=subnet.addressv6)
        self._apply_now()
        self._start_dataplane()

    def _connect(self, cluster_url: str, node_id: str | None = None) -> NodeSession:
        cfg = self.config
        mqtt = MqttConfig(
            host=cluster_url.strip("[]"),
            port=cfg.cluster_mqtt_port,
            client_id=node_id or self.state.node_id,
            username=cfg.mqtt_username or None,
            password=cfg.mqtt_password or None,
            ca_file=cfg.mqtt_ca or None,
            cert_file=cfg.mqtt_cert or None,
            key_file=cfg.mqtt_key or None,
        )
        self.session = self._session_factory(
            mqtt,
            mqtt.client_id,
            on_table_result=self._on_table_result,
            on_job_update=self._on_job_update,
        )
        self.session.start()
        return self.session

    def _require_registration(self) -> NodeSession:
        if not self.state.node_id or self.session is None:
            raise DaemonError(400, "this node is not registered yet: call /register first")
        return self.session

    # -- desired state for the reconciler -------------------------------------

    def desired(self) -> DesiredState:
        with self.lock:
            state = self.state
            if not state.subnet_v4:
                return DesiredState(node=None, containers=())
            node = NodeSpec(
                bridge=BRIDGE,
                bridge_v4_cidr=f"{bridge_address(state.subnet_v4)}/26",
                bridge_v6_cidr=f"{bridge_address(state.subnet_v6)}/120",
                subnet_v4=f"{state.subnet_v4}/26",
                subnet_v6=f"{state.subnet_v6}/120",
                mtu=self.config.container_mtu,
                tun=self.config.tun.device_name,
            )
            return DesiredState(node=node, containers=tuple(map(_spec, state.instances.values())))

    def _apply_now(self) -> None:
        try:
            self.reconciler.sync()
        except KernelError as err:
            raise DaemonError(500, f"cannot set up the node network: {err}") from None

    # -- containers -----------------------------------------------------------

    def deploy_container(
        self, pid: int, job_name: str, instance_number: int, port_mappings: str
    ) -> dict[str, str]:
        session = self._require_registration()
        _check_job(job_name, instance_number)
        mappings = _check_port_mappings(port_mappings)
        netns_path = self._netns_of(pid)
        key = instance_key(job_name, instance_number)
        with self.lock:
            current = self.state.instances.get(key)
            if current is not None and current.netns_inode == netns_inode(netns_path):
                return _answer(current)
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
            return netns_path_of_pid(pid)
        except KernelError as err:
            raise DaemonError(400, f"no network namespace for pid {pid}: {err}") from None

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
            self.reconciler.sync_container(_spec(instance))
        except KernelError as err:
            self._forget(instance)
            self.reconciler.sync_removed(_spec(instance))
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

    # -- unikernels -----------------------------------------------------------

    def deploy_unikernel(
        self, job_name: str, instance_number: int, port_mappings: str
    ) -> dict[str, str]:
        """Create the unikernel's named namespace (virbr0, tap0, NAT to the guest) and
        attach it like a container; the node engine then starts qemu inside it."""
        session = self._require_registration()
        _check_job(job_name, instance_number)
        _check_port_mappings(port_mappings)
        key = instance_key(job_name, instance_number)
        netns_path = self._named_netns_path(unikernel_netns_name(job_name, instance_number))
        with self.lock:
            current = self.state.instances.get(key)
            if current is not None and current.kind == "unikernel" and _alive(current):
                return _answer(current)
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
            self.reconciler.sync_removed(_spec(instance))
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

    # -- table, interests, queries --------------------------------------------

    def _follow_local(self, job_name: str) -> None:
        self.interests.set_local(job_name, self._local_count(job_name))
        if self.session is not None:
            self.session.follow_job(job_name)
        self.queries.query_async(sname=job_name, callback=_ignore)
        self._table_changed()  # the local instances changed

    def _send_query(self, request: TableQueryRequest) -> None:
        if self.session is not None:
            self.session.query(request)

    def _on_table_result(self, result: TableQueryResult) -> None:
        try:
            self._apply_table_result(result)
        finally:
            # after the table (and the data plane's snapshot): a waiting packet must find it
            self.queries.on_result(result)

    def _apply_table_result(self, result: TableQueryResult) -> None:
        job_name = result.app_name
        if not job_name:
            # the cluster knows no such job (any more): a name query empties its entries
            if is_valid_job_name(result.query_key) and self.table.remove_job(result.query_key):
                log.info("job gone, entries dropped", job_name=result.query_key)
                self._table_changed()
            return
        entries = [
            entry
            for instance in result.instance_list
            if (entry := TableEntry.from_instance(job_name, instance)) is not None
        ]
        if self.interests.add_remote(job_name) and self.session is not None:
            self.session.follow_job(job_name)
        self.interests.mark_used(job_name)
        if self.table.replace_job(job_name, entries):
            log.info("table updated", job_name=job_name, entries=len(entries))
            self._table_changed()

    def _on_job_update(self, job_name: str) -> None:
        if self.interests.is_interested(job_name):
            self.queries.query_async(sname=job_name, callback=_ignore)

    def _drop_job(self, job_name: str) -> None:
        if self.session is not None:
            self.session.publish(topics.INTEREST_REMOVE, InterestRemove(appname=job_name))
            self.session.unfollow_job(job_name)
        if self.table.remove_job(job_name):
            self._table_changed()
        log.info("interest dropped", job_name=job_name)

    def _table_changed(self) -> None:
        for listener in self.table_listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - one listener must not break the others
                log.exception("table listener failed")

    # -- the data plane -------------------------------------------------------

    def _start_dataplane(self) -> None:
        if self._dataplane_factory is None or self.dataplane is not None:
            return
        tun = self.config.tun
        self.dataplane = self._dataplane_factory(
            tun.device_name,
            f"{tun.tunnel_ip}/12",
            f"{tun.tun_net_ipv6}/7",
            tun.mtu,
            self.config.node_public_port,
            on_resolve=self.resolve_service_ip,
            on_used=self._jobs_used,
            netns_exec=self._netns_exec,
        )
        self.dataplane.start()
        self._push_snapshot()

    def _push_snapshot(self) -> None:
        """Send the data plane the table it needs: service IPs and local instances."""
        if self.dataplane is None:
            return
        with self.lock:
            local_ips = {i.namespace_ip for i in self.state.instances.values()}
        services = [
            ServiceEntry(
                view.service_ip,
                view.service_ip_v6,
                view.ip_type,
                tuple(map(self._endpoint, view.entries)),
            )
            for view in self.table.service_view()
        ]
        local = [
            self._endpoint(entry)
            for address in local_ips
            if (entry := self.table.by_namespace_ip(address)) is not None
        ]
        try:
            build_snapshot(services, local, self.node_ip)  # refuse what the process would
        except ValueError as err:
            log.error("table not usable by the data plane, not sent", reason=str(err))
            return
        self.dataplane.push_snapshot(services, local, self.node_ip)

    @staticmethod
    def _endpoint(entry: TableEntry) -> Endpoint:
        return Endpoint(
            job_name=entry.job_name,
            instance_number=entry.instance_number,
            namespace_ip=entry.namespace_ip,
            namespace_ip_v6=entry.namespace_ip_v6,
            instance_ip=entry.instance_ip,
            instance_ip_v6=entry.instance_ip_v6,
            node_ip=entry.node_ip,
            node_port=entry.node_port,
        )

    def _jobs_used(self, job_names: list[str]) -> None:
        for job_name in job_names:
            self.interests.mark_used(job_name)

    # seam for the data plane
    def resolve_service_ip(self, service_ip: str, callback: Callable[[bool], None]) -> None:
        self.queries.query_async(
            sip=service_ip, callback=lambda result: callback(bool(result and result.instance_list))
        )

    def mark_used(self, job_name: str) -> None:
        self.interests.mark_used(job_name)

    # -- housekeeping ---------------------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stop.wait(HOUSEKEEPING_SECONDS):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - housekeeping must go on
                log.exception("housekeeping round failed")

    def tick(self) -> None:
        """One housekeeping round: query timeouts, idle interests, the public address."""
        now = self.clock()
        self.queries.expire(now)
        for job_name in self.interests.expired(now):
            self._drop_job(job_name)
        if now >= self._next_address_check:
            self._next_address_check = now + self.config.address_watch_interval
            self.check_public_address()

    def check_public_address(self) -> bool:
        """Re-read the public address; on a change tell the cluster for every local instance."""
        if self.config.node_public_address not in ("", "0.0.0.0"):
            return False
        try:
            address = self.kernel.default_route_address(self.config.default_interface or None)
        except KernelError as err:
            log.warning("public address unknown", reason=str(err))
            return False
        if address == self.node_ip:
            return False
        log.info("public address changed", old=self.node_ip, new=address)
        self.node_ip = address
        if self.session is not None:
            with self.lock:
                instances = list(self.state.instances.values())
            for instance in instances:
                message = self._report(AddressChanged, instance)
                self.session.publish(topics.ADDRESS_CHANGED, message)
        self._table_changed()
        return True

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.lock:
            state = self.state
            instances = [
                {
                    "instance": i.key,
                    "kind": i.kind,
                    "namespace_ip": i.namespace_ip,
                    "namespace_ip_v6": i.namespace_ip_v6,
                    "veth": i.host_veth,
                    "port_mappings": i.port_mappings,
                }
                for i in state.instances.values()
            ]
        session = self.session
        return {
            "node_id": state.node_id,
            "registered": bool(state.node_id),
            "cluster": state.cluster_url,
            "broker_connected": bool(session and session.connected),
            "node_ip": self.node_ip,
            "node_port": self.config.node_public_port,
            "subnet": state.subnet_v4,
            "subnet_v6": state.subnet_v6,
            "instances": instances,
            "table": self.table.to_status(),
            "interests": self.interests.snapshot(),
            "pending_queries": self.queries.pending_keys(),
            "counters": {
                "mqtt": session.stats() if session else {},
                "reconciler_syncs": self.reconciler.sync_count,
                "reconciler_last_error": self.reconciler.last_error,
                "dataplane": self.dataplane.counters() if self.dataplane else {},
            },
            "peer_rtt_ms": {
                node: round(seconds * 1000, 3)
                for node, seconds in (self.dataplane.rtt if self.dataplane else {}).items()
            },
        }

    def _save(self) -> None:
        if self.addresses is not None:
            self.state.addresses = self.addresses.to_dict()
        statefile.save(self.config.state_file, self.state)


def _spec(instance: Instance) -> ContainerSpec:
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


def _alive(instance: Instance) -> bool:
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


def _ignore(_result: object) -> None:
    pass
