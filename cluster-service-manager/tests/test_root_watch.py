"""The root watch: a new root generation (or a root that forgot us) gets our state once."""

from __future__ import annotations

from cluster_service_manager.cache import JobCache
from cluster_service_manager.jobs import Job
from cluster_service_manager.root_client import NotFound, RootUnavailable
from cluster_service_manager.root_watch import UNSUPPORTED_INTERVAL, RootWatch, snapshot
from cluster_service_manager.root_work import StoredJournal


class FakeRoot:
    def __init__(self) -> None:
        self.generation: str | None = "g1"
        self.calls: list[tuple] = []
        self.cluster: dict | None = None
        self.brief: list[bool] = []

    def root_state(self, *, brief: bool = False) -> dict:
        self.brief.append(brief)
        if self.generation is None:
            raise RootUnavailable("down")
        if self.generation == "upstream":
            raise NotFound("no such endpoint")
        return {"generation": self.generation, "rebuilding": False, "cluster": self.cluster}

    def register_cluster(self, *registration) -> None:
        self.calls.append(("register", *registration))
        fields = ("cluster_id", "cluster_address", "cluster_port")
        self.cluster = dict(zip(fields, registration, strict=True))

    def push_state(self, state: dict) -> dict:
        self.calls.append(("push", len(state["jobs"]), len(state["subnets"])))
        return {"reserved": 0, "conflicts": []}


JOB = {
    "job_name": "X.default.X1.default",
    "job_id": "6630f0f0f0f0f0f0f0f0f001",
    "service_ip_list": [{"IpType": "RR", "Address": "10.30.0.1", "Address_v6": "fdff:2000::1"}],
    "instance_list": [
        {
            "instance_number": 0,
            "instance_ip": "10.30.0.3",
            "instance_ip_v6": "fdff::1",
            "cluster_id": "c1",
            "reported_by": "n1",
        }
    ],
}


def test_state_is_pushed_once_per_generation_and_again_when_forgotten(db):
    cache = JobCache(db, "c1")
    cache.store(Job.from_document(JOB))
    cache.claim_node_subnet("n1", ("10.16.0.0", "fc00::"))
    root = FakeRoot()
    watch = RootWatch(root, cache, ("c1", "192.0.2.10", 10110))  # type: ignore[arg-type]
    watch.check()
    watch.check()
    assert root.calls == [("register", "c1", "192.0.2.10", 10110), ("push", 1, 1)]
    root.generation = None  # the root is down: nothing to do, no error
    watch.check()
    root.generation = "g2"  # restarted on a new store
    watch.check()
    assert root.calls[-1] == ("push", 1, 1) and len(root.calls) == 4
    watch.trigger()  # a call said the root does not know us
    watch.check()
    assert len(root.calls) == 6
    root.generation = "upstream"
    assert watch.check() == UNSUPPORTED_INTERVAL


def test_snapshot_carries_addresses_and_locations(db):
    cache = JobCache(db, "c1")
    cache.store(Job.from_document(JOB))
    cache.claim_node_subnet("n1", ("10.16.0.0", "fc00::"))
    state = snapshot(cache)
    (job,) = state["jobs"]
    assert job["job_id"] == JOB["job_id"] and job["service_ip_list"] == JOB["service_ip_list"]
    assert job["instance_list"][0]["instance_ip"] == "10.30.0.3"
    assert "reported_by" not in job["instance_list"][0]
    assert state["subnets"] == [{"subnet_addr": "10.16.0.0", "subnet_addr_v6": "fc00::"}]


def test_a_cluster_registered_by_the_system_manager_registers_again_as_it_was(db):
    cache = JobCache(db, None)
    root = FakeRoot()
    root.cluster = {"cluster_id": "c7", "cluster_address": "192.0.2.7", "cluster_port": 10110}
    watch = RootWatch(root, cache, None)  # type: ignore[arg-type]
    watch.check()
    assert root.calls == [("push", 0, 0)]  # registered by somebody else: nothing to do
    root.generation, root.cluster = "g2", None  # a new store: it forgot us
    restarted = RootWatch(root, JobCache(db, None), None)  # type: ignore[arg-type]
    restarted.check()  # even after a restart of ours: the registration is in the store
    assert root.calls[1:] == [("register", "c7", "192.0.2.7", 10110), ("push", 0, 0)]


def test_a_job_forgotten_during_the_push_loses_the_interest_the_push_gave(db):
    cache = JobCache(db, "c1")
    cache.store(Job.from_document(JOB))
    taken = snapshot(cache)
    cache.delete(JOB["job_name"])  # forgotten while the push was on its way
    dropped: list[str] = []
    watch = RootWatch(
        FakeRoot(),  # type: ignore[arg-type]
        cache,
        None,
        state=lambda: taken,
        drop_interest=dropped.append,
    )
    watch.check()
    assert dropped == [JOB["job_name"]]


def test_a_restarted_cluster_refills_its_cache_before_it_pushes_its_state(db):
    """A cache lost with the process (embedded store) is fetched again from the root's
    record of our interests, so a root that loses its store next gets the whole state
    (else it hands out the addresses of services running here again)."""
    cache = JobCache(db, "c1")  # empty: the process restarted
    root = FakeRoot()
    root.cluster = {"cluster_id": "c1", "cluster_address": "192.0.2.10", "cluster_port": 10110}
    answers = {"g1": [JOB["job_name"]]}
    root_state = root.root_state
    root.root_state = lambda **kw: {
        **root_state(**kw),
        "interests": answers.get(root.generation, []),
    }
    fetched = []
    unavailable = [True]

    def refill(job_name: str) -> None:
        if unavailable[0]:
            raise RootUnavailable("busy")
        fetched.append(job_name)
        cache.store(Job.from_document(JOB))

    watch = RootWatch(root, cache, None, refill=refill)  # type: ignore[arg-type]
    watch.check()  # the root does not answer the fetch: tried again next round
    assert not watch.refilled and fetched == []
    unavailable[0] = False
    watch.check()
    assert fetched == [JOB["job_name"]] and watch.refilled
    root.generation = "g2"  # the root loses its store: it gets the job back
    watch.check()
    assert root.calls[-1] == ("push", 1, 0)
    assert fetched == [JOB["job_name"]]  # only once per process


def test_a_job_whose_interest_removal_is_journaled_is_not_refilled(db):
    """The previous process forgot the job and journaled the root interest removal;
    the root (down meanwhile) still lists the interest. Refilled, the job would be
    cached again, and the replayed removal keeps the interest of a cached job."""
    cache = JobCache(db, "c1")
    journal = StoredJournal(db)
    journal.add(
        "node:n2", "drop interest", {"kind": "drop_interest", "job_name": JOB["job_name"]}, True
    )
    root = FakeRoot()
    root_state = root.root_state
    root.root_state = lambda **kw: {
        **root_state(**kw),
        "interests": [JOB["job_name"], "X.default.X2.default"],
    }
    fetched: list[str] = []
    watch = RootWatch(root, cache, None, refill=fetched.append, dropping=journal.interest_drops)  # type: ignore[arg-type]
    watch.check()
    assert fetched == ["X.default.X2.default"] and watch.refilled


def test_the_roots_record_of_our_subnets_is_kept_and_pushed_to_a_new_root(db):
    """A cluster restarted on the embedded store lost its nodes' subnets; the root still
    has them. Kept once per process, they reach a root that loses its store next."""
    cache = JobCache(db, "c1")
    root = FakeRoot()
    root_state = root.root_state
    recorded = {"v4": ["10.16.0.64", "10.16.0.128"], "v6": ["fc00::100", "fc00::200"]}
    root.root_state = lambda **kw: {**root_state(**kw), "subnets": recorded}
    pushed: list[dict] = []
    push_state = root.push_state
    root.push_state = lambda state: (pushed.append(state), push_state(state))[1]
    watch = RootWatch(root, cache, ("c1", "192.0.2.10", 10110))  # type: ignore[arg-type]
    watch.check()
    assert {"subnet_addr": "10.16.0.64"} in snapshot(cache)["subnets"]
    assert {"subnet_addr_v6": "fc00::200"} in snapshot(cache)["subnets"]
    cache.claim_node_subnet("n1", ("10.16.0.64", "fc00::100"))
    cache.remove_node_subnet("n1")  # released: no longer in use, not pushed again
    root.generation = "g2"
    watch.check()
    assert sorted(map(str, pushed[-1]["subnets"])) == sorted(
        [str({"subnet_addr": "10.16.0.128"}), str({"subnet_addr_v6": "fc00::200"})]
    )


def test_the_lists_are_asked_for_until_taken_then_only_the_brief_state(db):
    """Interests and subnets grow with the jobs and nodes; the watch needs them once per
    process, the generation every round."""
    cache = JobCache(db, "c1")
    root = FakeRoot()
    unavailable = [True]

    def refill(job_name: str) -> None:
        if unavailable[0]:
            raise RootUnavailable("busy")

    root_state = root.root_state
    root.root_state = lambda **kw: {**root_state(**kw), "interests": [JOB["job_name"]]}
    watch = RootWatch(root, cache, None, refill=refill)  # type: ignore[arg-type]
    watch.check()  # the refill failed: the lists again next round
    unavailable[0] = False
    watch.check()
    watch.check()
    watch.check()
    assert root.brief == [False, False, True, True]
