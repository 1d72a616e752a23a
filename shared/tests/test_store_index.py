"""The embedded store's indexes: same answers as a mongomock scan, without the scan."""

from __future__ import annotations

import random

import mongomock
import pytest
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from oakestra_net import store, store_index


def _pair():
    """An indexed embedded collection and a plain mongomock one, same indexes."""
    indexed = store.connect("cluster", {})["jobs"]
    plain = mongomock.MongoClient()["db"]["jobs"]
    for collection in (indexed, plain):
        collection.create_index("name", unique=True)
        collection.create_index("ips.addr")
        collection.create_index("nodes")
        collection.create_index([("pool", 1), ("owner.job", 1)])
    return indexed, plain


FILTERS = [
    lambda r: {"_id": r.randrange(40)},
    lambda r: {"_id": {"$in": [r.randrange(40), r.randrange(40)]}},
    lambda r: {"name": f"job{r.randrange(40)}"},
    lambda r: {"ips.addr": f"10.0.0.{r.randrange(60)}"},
    lambda r: {"$or": [{"ips.addr": f"10.0.0.{r.randrange(60)}"}, {"nodes": f"n{r.randrange(5)}"}]},
    lambda r: {"nodes": f"n{r.randrange(5)}", "version": {"$gte": r.randrange(3)}},
    lambda r: {"pool": "a", "owner.job": f"job{r.randrange(40)}"},
    lambda r: {"$and": [{"_id": r.randrange(40)}, {"nodes.0": {"$exists": True}}]},
    lambda r: {"version": r.randrange(4)},  # not indexed: a scan
]


def _write(r: random.Random, collection) -> None:
    doc_id = r.randrange(40)
    op = r.randrange(7)
    try:
        if op == 0:
            collection.insert_one(
                {
                    "_id": doc_id,
                    "name": f"job{doc_id}",
                    "ips": [{"addr": f"10.0.0.{r.randrange(60)}"}],
                    "nodes": [],
                    "version": 0,
                    "pool": "a",
                    "owner": {"job": f"job{doc_id}"},
                }
            )
        elif op == 1:
            collection.update_one({"_id": doc_id}, {"$addToSet": {"nodes": f"n{r.randrange(5)}"}})
        elif op == 2:
            collection.update_many(
                {"nodes": f"n{r.randrange(5)}"}, {"$pull": {"nodes": f"n{r.randrange(5)}"}}
            )
        elif op == 3:
            collection.find_one_and_update(
                {"name": f"job{doc_id}"},
                {"$push": {"ips": {"addr": f"10.0.0.{r.randrange(60)}"}}, "$inc": {"version": 1}},
                return_document=ReturnDocument.AFTER,
            )
        elif op == 4:
            collection.delete_one({"_id": doc_id, "nodes.0": {"$exists": False}})
        elif op == 5:
            collection.replace_one(
                {"_id": doc_id}, {"name": f"job{doc_id}", "ips": [], "nodes": ["n1"], "version": 9}
            )
        else:
            collection.update_one(
                {"_id": doc_id}, {"$set": {"name": f"job{r.randrange(40)}"}}
            )  # may break the unique index: rejected by both
    except DuplicateKeyError:
        pass


@pytest.mark.parametrize("seed", range(6))
def test_indexed_answers_equal_mongomock_scans(seed: int) -> None:
    indexed, plain = _pair()
    writes, reads = random.Random(seed), random.Random(seed + 100)
    for _ in range(400):
        state = writes.getstate()
        _write(writes, indexed)
        writes.setstate(state)
        _write(writes, plain)
        query = reads.choice(FILTERS)(reads)
        assert list(indexed.find(query)) == list(plain.find(query)), query
    assert list(indexed.find({})) == list(plain.find({}))


def test_lookups_visit_only_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = store.connect("root", {})["jobs"]
    jobs.create_index("job_name", unique=True)
    jobs.create_index("service_ip_list.Address")
    jobs.insert_many(
        {
            "_id": i,
            "job_name": f"j{i}",
            "service_ip_list": [{"Address": f"10.30.{i // 256}.{i % 256}"}],
        }
        for i in range(2000)
    )
    calls = []
    real = store_index.filter_applies
    monkeypatch.setattr(store_index, "filter_applies", lambda f, d: calls.append(1) or real(f, d))
    assert jobs.find_one({"_id": 1500})["job_name"] == "j1500"
    assert jobs.find_one({"job_name": "j7"})["_id"] == 7
    assert jobs.find_one({"service_ip_list.Address": "10.30.3.4"})["_id"] == 3 * 256 + 4
    jobs.update_one({"_id": 9}, {"$set": {"job_name": "renamed"}})
    assert jobs.find_one({"job_name": "renamed"})["_id"] == 9
    assert jobs.find_one({"job_name": "j9"}) is None
    with pytest.raises(DuplicateKeyError):
        jobs.insert_one({"_id": 5000, "job_name": "j10"})
    assert len(calls) < 20


def test_a_changed_document_is_found_by_its_new_values_only() -> None:
    """Writes re-index only what changed: long arrays, and values that cannot be hashed."""
    indexed, plain = _pair()
    long_list = [f"n{i}" for i in range(2000)]
    writes = [
        lambda c: c.insert_one({"_id": 1, "name": "a", "nodes": long_list, "ips": []}),
        lambda c: c.update_one({"_id": 1}, {"$addToSet": {"nodes": "new"}}),
        lambda c: c.update_one({"_id": 1}, {"$pull": {"nodes": "n7"}}),
        lambda c: c.update_one({"_id": 1}, {"$push": {"nodes": {"odd": 1}}}),
        lambda c: c.update_one(
            {"_id": 1}, {"$set": {"nodes": ["n7", "n7"], "ips": [{"addr": "x"}]}}
        ),
        lambda c: c.update_one({"_id": 1}, {"$set": {"ips.0.addr": "y"}}),
    ]
    queries = [{"nodes": v} for v in ("new", "n7", "n8", {"odd": 1})]
    queries += [{"ips.addr": "x"}, {"ips.addr": "y"}]
    for write in writes:
        write(indexed)
        write(plain)
        for query in queries:
            assert list(indexed.find(query)) == list(plain.find(query)), query


def test_an_array_growing_at_its_end_is_found_by_every_value() -> None:
    """Appends take the short way (only the new values are indexed); so must other
    changes between them: a document in the array, the array replaced or shortened."""
    indexed, plain = _pair()
    steps = [
        {"$push": {"nodes": "b"}},
        {"$push": {"nodes": "a"}},  # a value it already holds
        {"$addToSet": {"nodes": "c"}},
        {"$push": {"nodes": {"doc": 1}}},  # not hashable
        {"$push": {"nodes": "d"}},
        {"$pull": {"nodes": {"doc": 1}}},
        {"$push": {"nodes": "e"}},
        {"$set": {"nodes": ["x", "a"]}},
        {"$push": {"nodes": "f"}},
        {"$pull": {"nodes": "a"}},
        {"$push": {"nodes": "a"}},
    ]
    for collection in (indexed, plain):
        collection.insert_one({"_id": 1, "name": "job1", "nodes": ["a"]})
    for step in steps:
        for collection in (indexed, plain):
            collection.update_one({"_id": 1}, step)
        for value in ("a", "b", "c", "d", "e", "f", "x", {"doc": 1}):
            query = {"nodes": value}
            assert list(indexed.find(query)) == list(plain.find(query)), (step, value)
