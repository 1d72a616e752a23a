"""One handler per node topic kind of reference §3, each taking a validated message.

A handler runs on an MQTT worker thread, in the order the node sent its messages. It
does there only what needs no root: answers from the cache, records reports in the
cache. Whatever needs the root goes into the node's lane (`lanes`), which keeps the
node's order, waits for an unavailable root, and never holds up other nodes. Once a
node has work waiting in its lane, its later messages queue behind it, so reports
and subnet requests apply in the node's order; table queries are no barrier: one
waiting for the root does not hold up the node's later messages, and the cache
answers what it can at once (a query changes nothing but the node's own interest).
Lane steps are idempotent: they may run again.

A node's report on an instance the orchestrator scheduled on another node is refused
and logged with both node ids; that the node id is the sender's own is the broker's
ACL's job (a node may publish only under `nodes/<its user name>/net/`). Decoding and
validating payloads is the MQTT endpoint's job; the root's final refusals are logged
by the lanes.
"""

from __future__ import annotations

from collections.abc import Callable

from oakestra_net.log import get_logger
from oakestra_net.messages import (
    AddressChanged,
    InterestRemove,
    ServiceDeployed,
    ServiceUndeployed,
    SubnetRequest,
    TableQueryRequest,
)
from oakestra_net.names import is_valid_job_name

from . import jobs
from .cache import JobCache
from .directory import Directory
from .jobs import Instances, Job
from .lanes import Lanes, Recorded, Step
from .metrics import Metrics
from .replies import Replies
from .root_client import RootClient, RootRejected
from .root_work import RootWork, node_message

log = get_logger(__name__)

Report = ServiceDeployed | ServiceUndeployed | AddressChanged
Change = Callable[[Instances], Instances]


def node_lane(node_id: str) -> str:
    return f"node:{node_id}"


class Handlers:
    def __init__(
        self,
        cache: JobCache,
        directory: Directory,
        root: RootClient,
        lanes: Lanes,
        replies: Replies,
        metrics: Metrics | None = None,
        work: RootWork | None = None,
    ) -> None:
        self.cache = cache
        self.directory = directory
        self.root = root
        self.lanes = lanes
        self.replies = replies
        self.metrics = metrics or Metrics()
        self.work = work or RootWork(root, directory)  # root calls that survive a restart

    # -- subnet -------------------------------------------------------------------------

    def subnet(self, node_id: str, msg: SubnetRequest) -> None:
        record = node_message(node_id, msg)
        if msg.method == "GET":
            self._ordered(node_id, "subnet request", lambda: self._known_subnet(node_id), record)
        else:
            self._ordered(node_id, "subnet release", lambda: self._release_subnet(node_id), record)

    def _known_subnet(self, node_id: str) -> Step | None:
        """A node asking again gets the subnet it has; otherwise the root is asked."""
        known = self.cache.node_subnet(node_id)
        if known is None:
            return lambda: self._new_subnet(node_id)
        self.replies.subnet(node_id, known)
        return None

    def _new_subnet(self, node_id: str) -> Step | None:
        known = self.cache.node_subnet(node_id)
        if known is not None:
            self.replies.subnet(node_id, known)
            return None
        fresh = self.root.new_subnet()
        stored = self.cache.claim_node_subnet(node_id, fresh)
        self.replies.subnet(node_id, stored)
        if stored != fresh:  # another process was faster: give ours back
            return self.work.release_subnet(*fresh)
        log.info("node subnet assigned", node_id=node_id, subnet=fresh[0], subnet_v6=fresh[1])
        return None

    def _release_subnet(self, node_id: str) -> Step | None:
        removed = self.cache.remove_node_subnet(node_id)
        if removed is None:
            log.info("subnet release of a node without subnet ignored", node_id=node_id)
            return None
        log.info("node subnet released", node_id=node_id, subnet=removed[0], subnet_v6=removed[1])
        return self.work.release_subnet(*removed)

    # -- table queries ------------------------------------------------------------------

    def table_query(self, node_id: str, msg: TableQueryRequest) -> None:
        key = msg.sip or msg.sname
        if not msg.sip and not is_valid_job_name(msg.sname):
            log.warning("table query for an invalid job name", node_id=node_id, sname=key[:80])
            self._answer(node_id, None, key, "invalid")
            return
        job = self.directory.cached(job_name=msg.sname, service_ip=msg.sip)
        if job is not None and self.cache.add_interest(job.job_name, node_id, job):
            self._answer(node_id, job, key, "cache")
            return
        self.lanes.submit(
            node_lane(node_id),
            f"table query {key}",
            lambda: self._query_root(node_id, msg),
            barrier=False,  # it changes nothing later messages depend on
        )

    def _query_root(self, node_id: str, msg: TableQueryRequest) -> None:
        key = msg.sip or msg.sname
        try:
            job = self.directory.resolve(job_name=msg.sname, service_ip=msg.sip, node_id=node_id)
            if job is not None:
                job = self.directory.with_interest(job, node_id)
        except RootRejected as err:
            log.warning("root refused a table query", node_id=node_id, key=key, reason=str(err))
            self._answer(node_id, None, key, "refused")
            return
        if job is None:
            log.info("table query for an unknown service", node_id=node_id, key=key)
        self._answer(node_id, job, key, "root" if job is not None else "unknown")

    def _answer(self, node_id: str, job: Job | None, key: str, source: str) -> None:
        self.metrics.table_query(source)
        self.replies.table(node_id, job, key)

    # -- instance reports ---------------------------------------------------------------

    def service_deployed(self, node_id: str, msg: ServiceDeployed) -> None:
        location = {
            "namespace_ip": msg.nsip,
            "namespace_ip_v6": msg.namespace_ip_v6 or None,
            "host_ip": msg.host_ip or None,
            "host_port": int(msg.host_port) or None,
        }

        def change(instances: Instances) -> Instances:
            return jobs.with_location(instances, msg.instance_number, node_id, location)

        self._report(node_id, msg, change, "DEPLOYMENT")

    def service_undeployed(self, node_id: str, msg: ServiceUndeployed) -> None:
        """Clear the location; an instance we do not cache has nothing to clear (no fetch)."""

        def change(instances: Instances) -> Instances:
            return jobs.without_location(instances, msg.instance_number, node_id)

        self._report(node_id, msg, change, "UNDEPLOYMENT", fetch=False)

    def address_changed(self, node_id: str, msg: AddressChanged) -> None:
        port = int(msg.host_port)

        def change(instances: Instances) -> Instances:
            return jobs.with_host(instances, node_id, msg.instance_number, msg.host_ip, port)

        self._report(node_id, msg, change, "DEPLOYMENT")

    def _report(
        self, node_id: str, msg: Report, change: Change, kind: str, *, fetch: bool = True
    ) -> None:
        what = f"{msg._LABEL} {msg.appname[:80]} instance {msg.instance_number}"
        if not is_valid_job_name(msg.appname):
            log.warning("report with an invalid job name dropped", node_id=node_id, what=what)
            return
        scheduled = self.cache.scheduled_node(msg.appname, msg.instance_number)
        if scheduled is not None and scheduled != node_id:
            self.metrics.message(msg._LABEL, "refused")
            log.warning(
                "report from a node the instance is not scheduled on refused",
                node_id=node_id,
                scheduled_node_id=scheduled,
                job_name=msg.appname,
                instance_number=msg.instance_number,
                report=msg._LABEL,
            )
            return
        report = _NodeReport(node_id, msg.appname, msg.instance_number, change, kind)
        step = lambda: self._apply(report, fetch=fetch)  # noqa: E731
        self._ordered(node_id, what, step, node_message(node_id, msg))

    def _apply(self, report: _NodeReport, *, fetch: bool) -> Step | None:
        """Apply a node report to the cached job; fetch the job first if that may help.

        The job, or the instance, may be missing: the root does not tell clusters about
        new instances, only about new locations.
        """
        result = self.cache.update_instances(report.job_name, report.change_if_known)
        if result is None or not report.known_in(result[1]):
            if fetch:
                return lambda: self._fetch_and_apply(report)
            log.info("report on an instance not cached here, nothing to do", **report.fields)
            return None
        before, after = result
        changed = jobs.changed_numbers(before.instances, after.instances)
        if not changed:
            return None
        kind = jobs.visible_change(before, after)
        if kind is not None:
            self.replies.job_update(report.job_name, kind)
        return lambda: self._tell_root(report, changed)

    def _fetch_and_apply(self, report: _NodeReport) -> Step | None:
        job = self.directory.fetch_by_name(report.job_name)
        if job is None or not report.known_in(job):
            log.warning("report on an instance the root does not know dropped", **report.fields)
            return None
        return self._apply(report, fetch=False)

    def _tell_root(self, report: _NodeReport, numbers: list[int]) -> Step | None:
        """Send the cached locations of these instances to the root (`net_deploy_status`).

        Undeployed instances are sent with null location fields, and the job is
        forgotten if nobody here needs it any more (after the report, in lane order).
        """
        job = self.cache.get(report.job_name)
        if job is None:
            return None
        located = report.kind == "DEPLOYMENT"
        entries = [
            i.location_report()
            for i in job.instances
            if i.instance_number in numbers and i.is_located == located
        ]
        if located:
            return self.work.report_locations(job.job_id, entries) if entries else None
        self._forget_if_unused(report.job_name, node_lane(report.node_id))
        return self.work.report_cleared(job.job_id, entries) if entries else None

    # -- interests ----------------------------------------------------------------------

    def interest_remove(self, node_id: str, msg: InterestRemove) -> None:
        name = msg.appname
        # First: "10.30.1.30" is also four dot-separated parts of letters and digits.
        if jobs.canonical_ip(name) is not None:
            # upstream nodes' pseudo-interest: interests are recorded per job, never per IP
            log.info("interest removal for a service IP ignored", node_id=node_id, service_ip=name)
            return
        if not is_valid_job_name(name):
            log.warning("interest removal for an invalid job name", node_id=node_id, name=name)
            return
        if self.cache.remove_interest(name, node_id):
            self._forget_if_unused(name, node_lane(node_id))
        else:
            self._drop_root_interest(name, node_lane(node_id))

    def _forget_if_unused(self, job_name: str, lane: str) -> None:
        if self.cache.forget_if_unused(job_name):
            log.info("job forgotten: no node interested, no instance here", job_name=job_name)
            self._drop_root_interest(job_name, lane)

    def _drop_root_interest(self, job_name: str, lane: str) -> None:
        step = self.work.drop_interest(job_name)
        self.lanes.submit(lane, f"root interest removal {job_name}", step)

    # -- plumbing -----------------------------------------------------------------------

    def _ordered(self, node_id: str, what: str, step: Step, record: dict) -> None:
        """Run `step` now, or behind the work already waiting in the node's lane.

        Run now, it must not call the root: the step it returns (root work) is queued.
        Queued, it is journaled as the node's message (`record`), to survive a restart.
        """
        lane = node_lane(node_id)
        if self.lanes.busy(lane):
            self.lanes.submit(lane, what, Recorded(record, step))
            return
        follow_up = step()
        if follow_up is not None:
            self.lanes.submit(lane, what, follow_up)


class _NodeReport:
    """A deployed / undeployed / address-changed report, as a change of the instance list."""

    def __init__(self, node_id: str, job_name: str, number: int, change: Change, kind: str):
        self.node_id = node_id
        self.job_name = job_name
        self.number = number
        self.change = change
        self.kind = kind

    def change_if_known(self, instances: Instances) -> Instances:
        return self.change(instances) if self._known(instances) else instances

    def known_in(self, job: Job) -> bool:
        return self._known(job.instances)

    def _known(self, instances: Instances) -> bool:
        return jobs.find_instance(instances, self.number) is not None

    @property
    def fields(self) -> dict:
        return {"node_id": self.node_id, "job_name": self.job_name, "instance_number": self.number}
