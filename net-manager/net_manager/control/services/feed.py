"""The daemon's side of services: table, interests and queries glued to the session
and the data plane.

Table answers and job updates from the cluster change the translation table; each
change is pushed to the data plane as a snapshot. The data plane asks for unknown
service IPs (resolve_service_ip: a table query) and reports which jobs carried traffic
(interests).
"""

from __future__ import annotations

from collections.abc import Callable

from net_manager.control.services.table import TableEntry
from net_manager.dataplane.backend import DataPlaneOptions
from oakestra_net import topics
from oakestra_net.log import get_logger
from oakestra_net.messages import (
    InterestRemove,
    ServiceDeployed,
    TableQueryRequest,
    TableQueryResult,
)
from oakestra_net.names import is_valid_job_name

log = get_logger("net_manager.control.daemon")


class ServiceFeed:
    """NodeDaemon's table, interest and query handling and its data-plane feed."""

    def _follow_local(self, job_name: str) -> None:
        self.interests.set_local(job_name, self._local_count(job_name))
        if self.session is not None:
            self.session.follow_job(job_name)
        self.queries.query_until_answered(
            sname=job_name, wanted=lambda: self._local_count(job_name) > 0
        )
        self._table_changed()  # the local instances changed

    def _send_query(self, request: TableQueryRequest) -> None:
        if self.session is not None:
            self.session.query(request)

    def _on_table_result(self, result: TableQueryResult) -> None:
        try:
            self._apply_table_result(result)
        finally:
            # After the table and the data plane's snapshot: the answer (Resolved) follows
            # the snapshot on the same channel, so the one replay it triggers finds the IP.
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
        self._report_missing_local(job_name, entries)

    def _report_missing_local(self, job_name: str, entries: list[TableEntry]) -> None:
        """Report again the local instances of the job the answer leaves out: the cluster
        missed their `service/deployed` (published while the broker restarted, before the
        cluster's subscription was live again), and without a location it leaves them
        out of every answer, for good. It announces the job once it has the report, and
        every node (this one too) then asks again."""
        listed = {(e.instance_number, e.namespace_ip) for e in entries}
        with self.lock:
            missing = [
                i
                for i in self.state.instances.values()
                if i.job_name == job_name and (i.instance_number, i.namespace_ip) not in listed
            ]
        if not missing or self.session is None:
            return
        for instance in missing:
            self.session.publish(topics.SERVICE_DEPLOYED, self._report(ServiceDeployed, instance))
        log.info(
            "local instances missing from the cluster's answer, reported again",
            job_name=job_name,
            instances=[i.instance_number for i in missing],
        )

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

    def _start_dataplane(self) -> None:
        if self._dataplane_factory is None or self.dataplane is not None:
            return
        tun = self.config.tun
        options = DataPlaneOptions(
            tun_name=tun.device_name,
            tun_v4_cidr=f"{tun.tunnel_ip}/12",
            tun_v6_cidr=f"{tun.tun_net_ipv6}/7",
            mtu=tun.mtu,
            port=self.config.node_public_port,
            on_resolve=self.resolve_service_ip,
            on_used=self._jobs_used,
            netns_exec=self._netns_exec,
            flow_quota=self.config.flow_quota,
            tunnel_key=self.config.tunnel_key,
            on_tunnel=self._on_tunnel,
        )
        self.dataplane = self._dataplane_factory(options)
        self.dataplane.start()
        self._push_snapshot()

    def _push_snapshot(self) -> None:
        """Send the data plane the table it needs: service IPs and local instances."""
        if self.dataplane is None:
            return
        with self.lock:
            local_ips = {i.namespace_ip for i in self.state.instances.values()}
        local = [
            entry.to_endpoint()
            for address in local_ips
            if (entry := self.table.by_namespace_ip(address)) is not None
        ]
        self.dataplane.push_snapshot(self.table.dataplane_services(), local, self.node_ip)

    def _jobs_used(self, job_names: list[str]) -> None:
        for job_name in job_names:
            self.interests.mark_used(job_name)

    def resolve_service_ip(self, service_ip: str, callback: Callable[[bool], None]) -> None:
        self.queries.query_async(
            sip=service_ip, callback=lambda result: callback(bool(result and result.instance_list))
        )

    def mark_used(self, job_name: str) -> None:
        self.interests.mark_used(job_name)


def _ignore(_result: object) -> None:
    pass
