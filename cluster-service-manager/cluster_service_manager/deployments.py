"""What the HTTP API does: job deployments announced by the cluster manager, root updates.

`deploy` (cluster manager, before it sends an instance to a node) fetches the job from
the root now, so the caller learns whether that worked; when the caller names the
instance and its node, the placement is recorded and only that node's reports on the
instance are accepted (until the root undeploys it). `remove` drops a cached job.
`root_update` (the root's push, reference §2.2) is answered at once and applied in
the job's lane, so updates of one job apply in the order the root sent them:
`DEPLOYMENT` refreshes a cached job from the root, `UNDEPLOYMENT` removes the
instance (-1: all) from the cache and, once the job has no instance left and no node
is interested, forgets it (dropping the root interest); after a -1 that leaves nodes
interested, the job is refreshed and forgotten if the root no longer knows it (the
root sends -1 when it removes a service). A change of what nodes see in the
table is announced to them once on `jobs/<job_name>/updates_available` (a refresh that
changes nothing visible, such as the root echoing a location we reported, is not); an
update for a job not cached here is passed on as it came. Input validation is the views' job.
"""

from __future__ import annotations

from oakestra_net.log import get_logger

from . import jobs
from .cache import JobCache
from .directory import Directory
from .jobs import CachedJob, Job
from .lanes import Lanes, Step
from .replies import Replies
from .root_client import NotFound

log = get_logger(__name__)

DEPLOYMENT = "DEPLOYMENT"
UNDEPLOYMENT = "UNDEPLOYMENT"
UPDATE_TYPES = (DEPLOYMENT, UNDEPLOYMENT)


def job_lane(job_name: str) -> str:
    return f"job:{job_name}"


class Deployments:
    def __init__(
        self, cache: JobCache, directory: Directory, lanes: Lanes, replies: Replies
    ) -> None:
        self.cache = cache
        self.directory = directory
        self.lanes = lanes
        self.replies = replies

    def deploy(self, job_name: str, placement: tuple[int, str] | None = None) -> CachedJob:
        """Fetch and cache the job, record `placement` (instance number, node id) if given;
        NotFound / RootUnavailable / RootRejected propagate."""
        if placement is not None:
            number, node_id = placement
            self.cache.schedule(job_name, number, node_id)
            log.info("placement recorded", job_name=job_name, number=number, node_id=node_id)
        before = self.cache.get(job_name)
        job = self.directory.fetch_by_name(job_name)
        if job is None:
            raise NotFound(f"root does not know job {job_name}")
        log.info("job stored", job_name=job_name, instances=len(job.instances))
        self._announce(job_name, before, job)
        return job

    def remove(self, job_name: str) -> bool:
        """Drop the cached job; whether it was cached."""
        self.cache.forget_placement(job_name, -1)
        if self.cache.delete(job_name) is None:
            return False
        log.info("job removed from the cache", job_name=job_name)
        self.replies.job_update(job_name, UNDEPLOYMENT)
        return True

    def root_update(self, job_name: str, instance_number: int, kind: str) -> None:
        what = f"{kind} update {job_name} instance {instance_number}"
        if kind == DEPLOYMENT:
            step = lambda: self._refresh(job_name)  # noqa: E731
        else:
            step = lambda: self._undeploy(job_name, instance_number)  # noqa: E731
        self.lanes.submit(job_lane(job_name), what, step)

    def _refresh(self, job_name: str) -> None:
        before = self.cache.get(job_name)
        if before is None:
            self.replies.job_update(job_name, DEPLOYMENT)
            return
        after = self.directory.fetch_by_name(job_name, create=False)
        if after is None and self.cache.delete(job_name) is not None:
            log.info("root no longer knows the job, removed from the cache", job_name=job_name)
        self._announce(job_name, before, after)

    def _announce(self, job_name: str, before: Job | None, after: Job | None) -> None:
        kind = jobs.visible_change(before, after)
        if kind is not None:
            self.replies.job_update(job_name, kind)

    def _undeploy(self, job_name: str, instance_number: int) -> Step | None:
        self.cache.forget_placement(job_name, instance_number)
        result = self.cache.update_instances(
            job_name, lambda instances: jobs.without_instance(instances, instance_number)
        )
        if result is None:
            self.replies.job_update(job_name, UNDEPLOYMENT)
        else:
            log.info("instance removed", job_name=job_name, instance_number=instance_number)
            self._announce(job_name, *result)
        emptied = result is not None and not result[1].instances
        if emptied and self.cache.forget_if_unused(job_name):
            log.info("job forgotten: no node interested, no instance here", job_name=job_name)
            return lambda: self.directory.drop_root_interest(job_name)
        if emptied and instance_number == -1:
            # The root sends this when the service itself was removed (or scaled to 0):
            # a job the root no longer knows must not stay cached for interested nodes,
            # since the root hands its service IPs out again.
            return lambda: self._refresh(job_name)
        return None
