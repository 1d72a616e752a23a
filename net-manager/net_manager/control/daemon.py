"""The node daemon: what the node engine's calls and the cluster's messages change.

Handlers only record desired state (registration, attached instances, table, interests)
and hand kernel work to the reconciler; the data plane gets table snapshots through
`table_listeners` and calls back `resolve_service_ip` and `mark_used`. Every change of
registration or instances is saved to the state file, so a restarted daemon re-adopts
live containers. This module holds the lifecycle, registration, desired state,
housekeeping and status; instances (`instances`) and services (`services.feed`) are
mixed in from their own modules.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from net_manager.config import NetConfig
from net_manager.control import statefile
from net_manager.control.addresses import ContainerAddresses
from net_manager.control.instances import (  # noqa: F401 - the API and tests use them from here
    DaemonError,
    Instances,
    is_alive,
    spec_of,
    unikernel_netns_name,
    veth_names,
)
from net_manager.control.services.feed import ServiceFeed
from net_manager.control.services.interests import Interests
from net_manager.control.services.queries import TableQueries
from net_manager.control.services.table import TranslationTable
from net_manager.control.session import NodeSession
from net_manager.control.statefile import NodeState
from net_manager.dataplane.backend import DataPlaneBackend, DataPlaneFactory
from net_manager.dataplane.modes import factory_for
from net_manager.node.kernel import BRIDGE, Kernel, KernelApi, KernelError
from net_manager.node.reconciler import DesiredState, NodeSpec, Reconciler
from net_manager.node.tunnel import TunnelSpec
from oakestra_net import topics
from oakestra_net.addressing import bridge_address
from oakestra_net.log import get_logger
from oakestra_net.messages import AddressChanged
from oakestra_net.mqtt import MqttConfig

log = get_logger(__name__)

REGISTER_BUDGET_SECONDS = 8.0  # the node engine gives up after 10 s
HOUSEKEEPING_SECONDS = 0.5


class NodeDaemon(Instances, ServiceFeed):
    """One node's control side; see the module doc."""

    def __init__(
        self,
        config: NetConfig,
        *,
        kernel: KernelApi | None = None,
        session_factory: Callable[..., NodeSession] = NodeSession,
        dataplane_factory: DataPlaneFactory | None | str = "configured",
        netns_exec: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`dataplane_factory` None runs without a data plane (tests of the control side),
        "configured" builds the one of `config.dataplane_mode`;
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
        if isinstance(dataplane_factory, str):
            dataplane_factory = factory_for(config.dataplane_mode)
        self._dataplane_factory = dataplane_factory
        self._netns_exec = netns_exec
        self.dataplane: DataPlaneBackend | None = None
        self.tunnel: TunnelSpec | None = None  # the kernel tunnel the data plane asked for
        self.table_listeners: list[Callable[[], None]] = [self._push_snapshot]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_address_check = clock() + config.address_watch_interval

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
            if not is_alive(instance):
                log.warning("container gone while we were down", instance=key)
                del state.instances[key]
                self.addresses.give_back(instance.namespace_ip, instance.namespace_ip_v6)
        self._connect(state.cluster_url)
        for instance in state.instances.values():
            self._follow_local(instance.job_name)
        self._save()
        self._start_dataplane()

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
            on_ready=self._on_session_ready,
        )
        self.session.start()
        return self.session

    def _on_session_ready(self) -> None:
        """The broker acknowledged our result subscription (again): answers and job updates
        published while it was not live are lost, so every pending query goes out again
        and every followed job is asked for afresh."""
        resent = self.queries.resend_pending()
        jobs = sorted(self.interests.jobs())
        for job_name in jobs:
            self.queries.query_async(sname=job_name, callback=_ignore_answer)
        log.info("table subscription live", queries_resent=resent, jobs_asked=len(jobs))

    def _require_registration(self) -> NodeSession:
        if not self.state.node_id or self.session is None:
            raise DaemonError(400, "this node is not registered yet: call /register first")
        return self.session

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
            containers = tuple(map(spec_of, state.instances.values()))
            return DesiredState(node=node, containers=containers, tunnel=self.tunnel)

    def _on_tunnel(self, spec: TunnelSpec | None) -> None:
        """The data plane needs the kernel tunnel to be `spec` before it goes on: record
        it (the reconciler keeps it so) and make it so now. Takes no daemon lock: the
        data plane calls this while a table push may hold it."""
        self.tunnel = spec
        self.reconciler.sync_tunnel(spec)

    def _apply_now(self) -> None:
        try:
            self.reconciler.sync()
        except KernelError as err:
            raise DaemonError(500, f"cannot set up the node network: {err}") from None

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
        self.queries.retry(now)
        lag = self.dataplane.use_lag() if self.dataplane is not None else 0.0
        for job_name in self.interests.expired(now, lag=lag):
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
            "dataplane_mode": getattr(self.dataplane, "mode", "tun") if self.dataplane else "",
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


def _ignore_answer(_result: object) -> None:
    pass
