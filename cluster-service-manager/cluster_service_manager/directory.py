"""Finding jobs: the cache first, the root second; and keeping the root's interest right.

The root sends job updates to this cluster only while it records our interest, which
it does on every table query and drops on `DELETE /api/net/interest/<job>`. The
invariant kept here: a job is in the cache only while the root records our interest.
So fetching a job from the root and storing it, and dropping the root interest of a
job that left the cache, never interleave for the same job: both hold that job's
lock (striped, in-process). A fetch by service IP learns the job name only from the
answer, so it checks afterwards whether a root interest was dropped meanwhile and, if
so, fetches again by name. (With several processes on one MongoDB a narrow race
remains: the interest then comes back with the next table query.)
"""

from __future__ import annotations

import threading
import zlib

from oakestra_net.log import get_logger
from oakestra_net.names import is_valid_job_name

from . import jobs
from .cache import JobCache
from .jobs import CachedJob, Job
from .root_client import NotFound, RootClient, RootRejected

log = get_logger(__name__)

LOCK_STRIPES = 64
INTEREST_ATTEMPTS = 3


class Directory:
    def __init__(self, cache: JobCache, root: RootClient) -> None:
        self.cache = cache
        self.root = root
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._generation = 0  # bumped whenever a root interest is dropped

    def lock(self, job_name: str) -> threading.Lock:
        return self._locks[zlib.crc32(job_name.encode()) % LOCK_STRIPES]

    def cached(self, *, job_name: str = "", service_ip: str = "") -> CachedJob | None:
        """The cached job for a service IP (if given) or a job name; no root call."""
        if service_ip:
            return self.cache.by_ip(service_ip)
        return self.cache.get(job_name) if job_name else None

    def resolve(
        self, *, job_name: str = "", service_ip: str = "", node_id: str | None = None
    ) -> CachedJob | None:
        """The job from the cache, else from the root (then cached, with `node_id`'s
        interest if given); None if unknown.

        Raises RootUnavailable when it had to ask the root and got no answer.
        """
        if service_ip:
            job = self.cache.by_ip(service_ip)
            return job if job is not None else self.fetch_by_ip(service_ip, interested=node_id)
        if not is_valid_job_name(job_name):
            return None
        with self.lock(job_name):
            # Many nodes asking for one new job at once queue on its lock: the first
            # fetches, the others find it cached (one root call, not one per node).
            job = self.cache.get(job_name)
            if job is not None:
                return job
            return self._fetch_locked(job_name, interested=node_id, absent=True)

    def fetch_by_name(self, job_name: str, *, create: bool = True) -> CachedJob | None:
        """Ask the root (which records our interest) and store the answer; None if unknown.

        `create=False`: refresh the job only if it is still cached (else None).
        """
        if not is_valid_job_name(job_name):
            return None
        with self.lock(job_name):
            return self._fetch_locked(job_name, create=create)

    def fetch_by_ip(self, service_ip: str, *, interested: str | None = None) -> CachedJob | None:
        if jobs.canonical_ip(service_ip) is None:
            return None
        generation = self._generation
        try:
            job = _checked(self.root.job_by_ip(service_ip))
        except NotFound:
            return None
        with self.lock(job.job_name):
            if self._generation != generation:
                return self._fetch_locked(job.job_name, interested=interested)
            return self.cache.store(job, interested=interested)

    def _fetch_locked(
        self,
        job_name: str,
        *,
        create: bool = True,
        interested: str | None = None,
        absent: bool = False,
    ) -> CachedJob | None:
        """`absent`: the caller found the job missing from the cache under its lock."""
        try:
            job = _checked(self.root.job_by_name(job_name))
        except NotFound:
            return None
        if job.job_name != job_name:
            raise RootRejected(f"root answered job {job['job_name']} for {job_name}")
        return self.cache.store(job, create=create, interested=interested, absent=absent)

    def with_interest(self, job: CachedJob, node_id: str) -> CachedJob | None:
        """Record the node's interest in a cached job; fetch it again if it left the cache.

        Returns the job as cached with the interest, or None if the root no longer knows it.
        """
        name = job.job_name
        if node_id in job.interested_nodes:  # stored with it: a job a node follows stays
            return job
        for _ in range(INTEREST_ATTEMPTS):
            if self.cache.add_interest(name, node_id):
                return job
            with self.lock(name):
                job = self._fetch_locked(name)
                if job is None:
                    return None
                if self.cache.add_interest(name, node_id):
                    return job
        log.warning("job keeps leaving the cache, interest not recorded", job_name=name)
        return job

    def drop_root_interest(self, job_name: str) -> None:
        """Tell the root we no longer care about the job, unless it is cached again."""
        with self.lock(job_name):
            if self.cache.get(job_name) is not None:
                log.debug("job cached again, root interest kept", job_name=job_name)
                return
            self._generation += 1
            self.root.remove_interest(job_name)
        log.info("root interest removed", job_name=job_name)


def _checked(doc: dict) -> Job:
    try:
        return jobs.from_root(doc)
    except jobs.InvalidJob as err:
        raise RootRejected(f"unusable root answer: {err}") from None
