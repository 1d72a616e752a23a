"""The job cache on the store: atomic interests, compare-and-set instance lists, subnets."""

from __future__ import annotations

import threading

import pytest

from cluster_service_manager import jobs
from cluster_service_manager.cache import JobCache

NAME = "X.default.X3.default"


def root_job(instances: int = 3) -> jobs.Job:
    return jobs.from_root(
        {
            "_id": "6630f0f0f0f0f0f0f0f0f003",
            "job_name": NAME,
            "service_ip_list": [
                {"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff:2000::1"}
            ],
            "instance_list": [
                {
                    "instance_number": n,
                    "instance_ip": f"10.30.0.{n + 2}",
                    "instance_ip_v6": f"fdff::{n + 1}",
                    "cluster_id": "c1",
                }
                for n in range(instances)
            ],
        }
    )


@pytest.fixture
def cache(db) -> JobCache:
    cache = JobCache(db)
    cache.ensure_indexes()
    return cache


def location(n: int) -> dict:
    return {
        "namespace_ip": f"10.16.0.{n + 2}",
        "namespace_ip_v6": f"fc00::{n + 2}",
        "host_ip": "192.0.2.1",
        "host_port": 50103,
    }


def run_together(functions) -> None:
    start = threading.Barrier(len(functions))
    errors = []

    def run(fn):
        start.wait()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in functions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors


def test_a_refresh_does_not_bring_back_a_forgotten_job(cache):
    """A root update racing the last interest removal: the job stays forgotten."""
    cache.store(root_job())
    assert cache.forget_if_unused(NAME) or cache.delete(NAME)
    assert cache.store(root_job(), create=False) is None
    assert cache.get(NAME) is None and cache.count() == 0


def test_store_refresh_keeps_interests_and_node_reports(cache):
    cache.store(root_job())
    assert cache.add_interest(NAME, "nodeA")
    cache.update_instances(NAME, lambda i: jobs.with_location(i, 1, "nodeA", location(1)))
    stored = cache.store(root_job())
    assert stored.interested_nodes == ("nodeA",)
    assert stored.instances[1].namespace_ip == "10.16.0.3"
    assert cache.get(NAME) == stored


def test_a_job_fetched_for_a_node_is_stored_with_its_interest(cache, db):
    """One write: the insert carries the asking node; a refresh leaves interests alone,
    and the job is not forgotten while the node follows it."""
    stored = cache.store(root_job(), interested="nodeA")
    assert stored.interested_nodes == ("nodeA",)
    assert db["jobs"].find_one({"_id": NAME})["interested_nodes"] == ["nodeA"]
    assert cache.store(root_job(), interested="nodeB").interested_nodes == ("nodeA",)
    assert not cache.forget_if_unused(NAME)


def _counting_reads(cache, monkeypatch) -> list[str]:
    reads: list[str] = []
    read = cache.get

    def get(name):
        reads.append(name)
        return read(name)

    monkeypatch.setattr(cache, "get", get)
    return reads


def test_a_job_seen_missing_is_inserted_without_reading_it_first(cache, monkeypatch):
    reads = _counting_reads(cache, monkeypatch)
    stored = cache.store(root_job(), interested="nodeA", absent=True)
    assert reads == [] and stored.interested_nodes == ("nodeA",)
    cache.store(root_job())  # without the hint: read, then refresh
    assert reads == [NAME]


def test_a_job_stored_meanwhile_turns_an_insert_without_reading_into_a_refresh(cache, monkeypatch):
    """`absent`: the caller saw the job missing; another process stored it since."""
    cache.store(root_job(2), interested="nodeA")
    cache.update_instances(NAME, lambda i: jobs.with_location(i, 1, "nodeA", location(1)))
    reads = _counting_reads(cache, monkeypatch)
    stored = cache.store(root_job(3), interested="nodeB", absent=True)
    assert reads == [NAME]  # the insert failed first, then the refresh read it
    assert [i.instance_number for i in stored.instances] == [0, 1, 2]
    assert stored.instances[1].namespace_ip == "10.16.0.3"  # the node report kept
    assert stored.interested_nodes == ("nodeA",)
    assert cache.get(NAME) == stored


def test_lookup_by_any_service_ip_in_canonical_form(cache):
    cache.store(root_job())
    for address in ("10.30.1.30", "fdff:2000::1", "10.30.0.3", "fdff:0:0::2"):
        assert cache.by_ip(address).job_name == NAME
    assert cache.by_ip("10.30.9.9") is None
    assert cache.by_ip("no-ip") is None


def test_concurrent_reports_and_refreshes_lose_nothing(cache):
    cache.store(root_job(instances=12))

    def report(n):
        return lambda: cache.update_instances(
            NAME, lambda i: jobs.with_location(i, n, f"node{n}", location(n))
        )

    run_together([report(n) for n in range(12)] + [lambda: cache.store(root_job(12))] * 4)
    instances = cache.get(NAME).instances
    assert [i.worker_id for i in instances] == [f"node{n}" for n in range(12)]


def test_concurrent_interests_use_add_to_set_and_pull(cache):
    cache.store(root_job())
    nodes = [f"node{n}" for n in range(20)]
    run_together([lambda n=n: cache.add_interest(NAME, n) for n in nodes * 2])
    assert sorted(cache.get(NAME).interested_nodes) == sorted(nodes)
    run_together([lambda n=n: cache.remove_interest(NAME, n) for n in nodes[:10]])
    assert sorted(cache.get(NAME).interested_nodes) == sorted(nodes[10:])
    assert not cache.add_interest("Y.default.Y.default", "node0")
    assert not cache.remove_interest("Y.default.Y.default", "node0")


def test_forget_only_without_interest_and_without_local_instances(cache):
    cache.store(root_job())
    cache.add_interest(NAME, "nodeA")
    assert not cache.forget_if_unused(NAME)
    cache.remove_interest(NAME, "nodeA")
    cache.update_instances(NAME, lambda i: jobs.with_location(i, 0, "nodeB", location(0)))
    assert not cache.forget_if_unused(NAME), "an instance runs on node B"
    cache.update_instances(NAME, lambda i: jobs.without_location(i, 0, "nodeB"))
    assert cache.forget_if_unused(NAME)
    assert cache.get(NAME) is None
    assert not cache.forget_if_unused(NAME)


def test_forget_respects_instances_scheduled_to_this_cluster(db):
    cache = JobCache(db, cluster_id="c1")
    cache.store(root_job())
    assert not cache.forget_if_unused(NAME)
    assert cache.update_instances(NAME, lambda i: jobs.without_instance(i, -1)) is not None
    assert cache.forget_if_unused(NAME)


def test_the_store_holds_the_documents_upstream_tools_read(cache):
    """Jobs are typed in the code; the store keeps the same documents as before."""
    cache.store(root_job())
    cache.add_interest(NAME, "nodeA")
    cache.update_instances(NAME, lambda i: jobs.with_location(i, 1, "nodeA", location(1)))
    doc = cache.jobs.find_one({"_id": NAME})
    assert set(doc) == {
        "_id",
        "job_name",
        "job_id",
        "service_ip_list",
        "instance_list",
        "interested_nodes",
        "version",
    }
    assert doc["interested_nodes"] == ["nodeA"] and doc["version"] == 2
    first, second = doc["instance_list"][:2]
    assert "worker_id" not in first and first["namespace_ip"] is None
    assert second["worker_id"] == second["reported_by"] == "nodeA"
    assert second["host_port"] == 50103


def test_update_of_an_unknown_job_is_none(cache):
    assert cache.update_instances(NAME, lambda i: i) is None


def test_node_subnet_is_claimed_once(cache):
    results = []
    offers = [(f"10.16.0.{64 * n}", f"fc00::{n}00") for n in range(4)]
    run_together([lambda o=o: results.append(cache.claim_node_subnet("nodeA", o)) for o in offers])
    assert len(set(results)) == 1 and results[0] in offers
    assert cache.node_subnet("nodeA") == results[0]
    assert cache.remove_node_subnet("nodeA") == results[0]
    assert cache.remove_node_subnet("nodeA") is None
    assert cache.node_subnet("nodeA") is None
