"""The embedded store's in-memory job index answers exactly what the store holds."""

from __future__ import annotations

import random

import pytest

from cluster_service_manager import jobs
from cluster_service_manager.cache import IP_FIELDS, JobCache
from oakestra_net import store


def _job(r: random.Random, index: int) -> jobs.Job:
    return jobs.Job.from_document(
        {
            "job_name": f"A.b.s{index}.d",
            "job_id": f"{index:024x}",
            "service_ip_list": [
                {"IpType": "RR", "Address": f"10.30.0.{r.randrange(12)}", "Address_v6": None}
            ],
            "instance_list": [
                {
                    "instance_number": n,
                    "instance_ip": f"10.30.1.{r.randrange(12)}",
                    "instance_ip_v6": f"fdff::{r.randrange(12):x}",
                    "cluster_id": "c1",
                    "namespace_ip": None,
                    "namespace_ip_v6": None,
                    "host_ip": None,
                    "host_port": None,
                }
                for n in range(r.randrange(3))
            ],
        }
    )


def _loaded(doc: dict | None) -> jobs.CachedJob | None:
    return None if doc is None else jobs.CachedJob.from_store(doc)


@pytest.mark.parametrize("seed", range(4))
def test_memory_answers_equal_store_answers(seed: int) -> None:
    r = random.Random(seed)
    cache = JobCache(store.connect("cluster", {}), "c1")
    cache.ensure_indexes()
    for _ in range(300):
        index, node = r.randrange(8), f"n{r.randrange(3)}"
        name = f"A.b.s{index}.d"
        op = r.randrange(6)
        if op == 0:
            cache.store(_job(r, index))
        elif op == 1:
            cache.update_instances(name, lambda i: jobs.without_instance(i, r.randrange(3)))
        elif op == 2:
            cache.add_interest(name, node, cache.get(name) if r.random() < 0.5 else None)
        elif op == 3:
            cache.remove_interest(name, node)
        elif op == 4:
            cache.forget_if_unused(name)
        else:
            cache.delete(name)
        for i in range(8):
            assert cache.get(f"A.b.s{i}.d") == _loaded(cache.jobs.find_one({"_id": f"A.b.s{i}.d"}))
        address = r.choice([f"10.30.0.{r.randrange(12)}", f"10.30.1.{r.randrange(12)}"])
        holders = [
            _loaded(doc) for doc in cache.jobs.find({"$or": [{f: address} for f in IP_FIELDS]})
        ]
        found = cache.by_ip(address)
        assert (found is None) == (not holders)
        assert found is None or found in holders


def test_a_cache_opened_on_a_store_with_jobs_answers_and_refreshes_them() -> None:
    db = store.connect("cluster", {})
    job = _job(random.Random(1), 1)
    JobCache(db, "c1").store(job)
    reopened = JobCache(db, "c1")  # a restart on the same embedded store
    assert reopened.get(job.job_name) is not None
    stored = reopened.store(job)
    assert stored is not None and stored.version == 2
