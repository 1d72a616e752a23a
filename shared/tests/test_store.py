"""store: which MongoDB the env selects, and an embedded store as atomic as a server."""

import datetime
import logging
import threading

import pymongo
import pymongo.database
import pymongo.errors
import pytest

from oakestra_net import store
from testsupport import free_port

THREADS = 16


@pytest.mark.parametrize(
    ("component", "env", "url"),
    [
        ("root", {}, None),
        ("cluster", {}, None),
        ("root", {"MONGO_URL": "mongodb://db:27017/"}, "mongodb://db:27017/"),
        ("root", {"MONGO_URL": "mongodb+srv://db.example/x"}, "mongodb+srv://db.example/x"),
        (
            "root",
            {"MONGO_URL": "mongodb://a/", "ROOT_MONGO_URL": "b", "ROOT_MONGO_PORT": "1"},
            "mongodb://a/",
        ),
        ("root", {"MONGO_URL": "mongomock://", "ROOT_MONGO_URL": "b"}, None),
        ("root", {"MONGO_URL": "  ", "ROOT_MONGO_URL": "b"}, "mongodb://b:27017/"),
        (
            "root",
            {"ROOT_MONGO_URL": "mongo_net", "ROOT_MONGO_PORT": "10008"},
            "mongodb://mongo_net:10008/",
        ),
        (
            "cluster",
            {"CLUSTER_MONGO_URL": "cluster_mongo_net", "CLUSTER_MONGO_PORT": "10108"},
            "mongodb://cluster_mongo_net:10108/",
        ),
        ("cluster", {"ROOT_MONGO_URL": "mongo_net", "ROOT_MONGO_PORT": "10008"}, None),
        ("root", {"ROOT_MONGO_URL": "localhost"}, "mongodb://localhost:27017/"),
        (
            "root",
            {"ROOT_MONGO_URL": "fd00::10", "ROOT_MONGO_PORT": "10008"},
            "mongodb://[fd00::10]:10008/",
        ),
        (
            "cluster",
            {"CLUSTER_MONGO_URL": "[fd00::10]", "CLUSTER_MONGO_PORT": "10108"},
            "mongodb://[fd00::10]:10108/",
        ),
        ("root", {"ROOT_MONGO_URL": "mongomock://", "ROOT_MONGO_PORT": "1"}, None),
    ],
)
def test_mongo_url_from_env(component, env, url):
    assert store.mongo_url_from_env(component, env) == url


@pytest.mark.parametrize(
    ("component", "env", "error"),
    [
        ("edge", {}, "store component 'edge'"),
        ("root", {"MONGO_URL": "http://db:27017"}, "MONGO_URL='http://db:27017'"),
        ("root", {"ROOT_MONGO_URL": "db", "ROOT_MONGO_PORT": "abc"}, "ROOT_MONGO_PORT='abc'"),
        ("root", {"ROOT_MONGO_URL": "db", "ROOT_MONGO_PORT": "0"}, "ROOT_MONGO_PORT='0'"),
        ("cluster", {"CLUSTER_MONGO_URL": "db", "CLUSTER_MONGO_PORT": "70000"}, "70000"),
        ("root", {"ROOT_MONGO_PORT": "10008"}, "ROOT_MONGO_URL is not"),
        ("root", {"ROOT_MONGO_URL": "mongodb://db"}, "must be a host name"),
    ],
)
def test_bad_env_is_rejected_naming_the_variable(component, env, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        store.mongo_url_from_env(component, env)


@pytest.mark.process  # connects to a port nothing listens on
def test_connect_to_a_real_server_url_is_lazy_and_configured():
    url = f"mongodb://127.0.0.1:{free_port()}/netdb"
    db = store.connect("root", {"MONGO_URL": url})
    try:
        assert isinstance(db, pymongo.database.Database)
        assert db.name == "netdb"
        assert not store.is_embedded(db)
        assert db.client.options.server_selection_timeout == 5
        assert db.codec_options.tz_aware
    finally:
        db.client.close()


@pytest.mark.parametrize(
    ("env", "database", "name"),
    [
        (
            {"CLUSTER_MONGO_URL": "127.0.0.1", "CLUSTER_MONGO_PORT": "1"},
            None,
            "oakestra_net_cluster",
        ),
        ({"MONGO_URL": "mongodb://127.0.0.1:1/fromurl"}, "explicit", "explicit"),
    ],
)
def test_real_database_name(env, database, name):
    db = store.connect("cluster", env, database=database)
    try:
        assert db.name == name
    finally:
        db.client.close()


def test_embedded_store_works_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(store, "_embedded_warned", False)
    with caplog.at_level(logging.WARNING):
        db = store.connect("root", {})
        other = store.connect("root", {"MONGO_URL": "mongomock://"}, database="mine")
    warnings = [r for r in caplog.records if "NOT PERSISTENT" in r.getMessage()]
    assert len(warnings) == 1 and "one process" in warnings[0].getMessage()
    assert store.is_embedded(db) and store.is_embedded(other)
    assert (db.name, other.name) == ("oakestra_net_root", "mine")
    db.jobs.insert_one({"job_name": "a.b.c.d", "at": datetime.datetime.now(datetime.UTC)})
    found = db["jobs"].find_one({"job_name": "a.b.c.d"}, {"_id": 0})
    assert found["at"].tzinfo is not None
    assert other.jobs.count_documents({}) == 0, "each embedded connect is a separate store"


def test_embedded_cursor_methods_and_navigation():
    db = store.connect("root", {})
    db.items.insert_many([{"n": n} for n in range(10)])
    assert [d["n"] for d in db.items.find({"n": {"$gte": 3}}).sort("n", -1).skip(1).limit(3)] == [
        8,
        7,
        6,
    ]
    with db.items.find({}, {"_id": 0}).sort("n") as cursor:
        assert next(cursor) == {"n": 0}
    assert db.items.find().sort("n")[2]["n"] == 2
    assert [
        d["total"] for d in db.items.aggregate([{"$group": {"_id": 1, "total": {"$sum": "$n"}}}])
    ] == [45]
    assert db.items.database == db and db.items.name == "items"
    assert "items" in db.list_collection_names()
    with pytest.raises(NotImplementedError):
        bool(db)


def test_embedded_errors_are_pymongo_exceptions():
    db = store.connect("root", {})
    db.subnets.create_index("subnet", unique=True)
    db.subnets.insert_one({"subnet": "10.18.0.0"})
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        db.subnets.insert_one({"subnet": "10.18.0.0"})
    db.subnets.insert_one({"subnet": "10.18.0.64"})
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        db.subnets.update_one({"subnet": "10.18.0.64"}, {"$set": {"subnet": "10.18.0.0"}})
    with pytest.raises(pymongo.errors.BulkWriteError):
        db.subnets.insert_many([{"subnet": "10.18.0.128"}, {"subnet": "10.18.0.0"}])


def run_threads(target, count=THREADS):
    errors = []

    def guarded(index):
        try:
            target(index)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


def test_embedded_find_one_and_update_inc_is_atomic():
    counters = store.connect("root", {}).counters
    counters.insert_one({"_id": "instance_ip", "next": 0})
    seen = [[] for _ in range(THREADS)]

    def allocate(index):
        for _ in range(500):
            doc = counters.find_one_and_update(
                {"_id": "instance_ip"},
                {"$inc": {"next": 1}},
                return_document=pymongo.ReturnDocument.AFTER,
            )
            seen[index].append(doc["next"])

    run_threads(allocate)
    values = [v for per_thread in seen for v in per_thread]
    assert len(values) == 8000
    assert len(set(values)) == 8000, "two callers got the same counter value"
    assert counters.find_one({"_id": "instance_ip"})["next"] == 8000


def test_embedded_unique_insert_admits_each_key_exactly_once():
    leases = store.connect("root", {}).leases
    leases.create_index("address", unique=True)
    won = [[] for _ in range(THREADS)]
    duplicates = []

    def reserve(index):
        for n in range(200):
            try:
                leases.insert_one({"address": f"10.30.0.{n}", "owner": index})
                won[index].append(n)
            except pymongo.errors.DuplicateKeyError:
                duplicates.append(n)

    run_threads(reserve)
    winners = [n for per_thread in won for n in per_thread]
    assert sorted(winners) == list(range(200))
    assert len(duplicates) == THREADS * 200 - 200
    assert leases.count_documents({}) == 200


def test_embedded_array_updates_lose_nothing():
    clusters = store.connect("root", {}).clusters
    clusters.insert_one({"_id": "c1", "interests": [], "log": []})

    def update(index):
        for n in range(40):
            clusters.update_one({"_id": "c1"}, {"$addToSet": {"interests": f"job{n % 20}"}})
            clusters.update_one({"_id": "c1"}, {"$push": {"log": (index, n)}})
            if n % 10 == 0:
                clusters.update_one({"_id": "c1"}, {"$pull": {"interests": "gone"}})

    run_threads(update)
    doc = clusters.find_one({"_id": "c1"})
    assert sorted(doc["interests"]) == sorted(f"job{n}" for n in range(20))
    assert len(doc["log"]) == THREADS * 40


def test_embedded_reads_while_others_write():
    jobs = store.connect("root", {}).jobs

    def churn(index):
        for n in range(100):
            if index % 2:
                jobs.insert_one({"job": f"{index}.{n}"})
                jobs.delete_many({"job": f"{index}.{n - 5}"})
            else:
                snapshot = list(jobs.find({}, {"_id": 0}).sort("job"))
                assert all(set(doc) == {"job"} for doc in snapshot)

    run_threads(churn)
    assert jobs.count_documents({}) == (THREADS // 2) * 5
