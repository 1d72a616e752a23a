"""Interests live one per document: recording one never rewrites the cluster document,
and interest arrays stored by an earlier version are moved over at start."""

from __future__ import annotations

from root_service_manager.clusters import Clusters


def _clusters(db) -> Clusters:
    clusters = Clusters(db)
    clusters.ensure_indexes()
    clusters.register("c1", "192.0.2.10", 10110)
    clusters.register("c2", "192.0.2.11", 10110)
    return clusters


def test_an_interest_is_recorded_once_and_the_cluster_document_does_not_grow(db):
    clusters = _clusters(db)
    before = db["clusters"].find_one({"cluster_id": "c1"})
    for job in ("a.x.y.z", "b.x.y.z", "a.x.y.z"):
        clusters.add_interest("c1", job)
    clusters.add_interest("c2", "a.x.y.z")

    assert db["cluster_interests"].count_documents({"cluster_id": "c1"}) == 2
    assert db["clusters"].find_one({"cluster_id": "c1"}) == before
    assert clusters.by_id("c1")["interests"] == ["a.x.y.z", "b.x.y.z"]
    assert sorted(c["cluster_id"] for c in clusters.interested_in("a.x.y.z")) == ["c1", "c2"]
    assert [c["cluster_id"] for c in clusters.interested_in("b.x.y.z")] == ["c1"]
    assert clusters.interested_in("nobody.x.y.z") == []


def test_removing_interests_of_one_cluster_or_of_all(db):
    clusters = _clusters(db)
    for cluster_id in ("c1", "c2"):
        for job in ("a.x.y.z", "b.x.y.z"):
            clusters.add_interest(cluster_id, job)

    clusters.remove_interest("c1", "a.x.y.z")
    clusters.remove_interest("c1", "never.x.y.z")
    assert clusters.interests_of("c1") == ["b.x.y.z"]
    assert clusters.interests_of("c2") == ["a.x.y.z", "b.x.y.z"]

    clusters.drop_interest_everywhere("b.x.y.z")
    assert clusters.interests_of("c1") == []
    assert clusters.interests_of("c2") == ["a.x.y.z"]
    assert clusters.by_address("192.0.2.11", interests=True)["interests"] == ["a.x.y.z"]
    assert "interests" not in clusters.by_address("192.0.2.11")


def test_interest_arrays_of_an_earlier_version_are_moved_once(db):
    db["clusters"].create_index("interests")
    db["clusters"].insert_one(
        {
            "cluster_id": "old",
            "cluster_address": "192.0.2.20",
            "cluster_port": 10110,
            "status": "ACTIVE",
            "interests": ["a.x.y.z", "b.x.y.z"],
        }
    )
    db["clusters"].insert_one(
        {
            "cluster_id": "empty",
            "cluster_address": "192.0.2.21",
            "cluster_port": 10110,
            "status": "ACTIVE",
            "interests": [],
        }
    )

    clusters = Clusters(db)
    clusters.ensure_indexes()
    clusters.ensure_indexes()  # a second process starting, or a restart: nothing doubles

    assert clusters.by_id("old")["interests"] == ["a.x.y.z", "b.x.y.z"]
    assert db["cluster_interests"].count_documents({}) == 2
    assert db["clusters"].count_documents({"interests": {"$exists": True}}) == 0
    assert "interests_1" not in db["clusters"].index_information()
    assert [c["cluster_id"] for c in clusters.interested_in("b.x.y.z")] == ["old"]


class _IndexDroppedMeanwhile:
    """The clusters collection as a second worker sees it: the old index listed, then
    dropped by the first worker before this one drops it."""

    def __init__(self, collection) -> None:
        self._collection = collection

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def index_information(self) -> dict:
        return {**self._collection.index_information(), "interests_1": {"key": [("interests", 1)]}}


def test_two_workers_moving_interests_at_once_both_start(db):
    db["clusters"].insert_one({"cluster_id": "old", "interests": ["a.x.y.z"]})
    Clusters(db).ensure_indexes()  # the first worker: moves and drops the index
    second = Clusters(db)
    second.clusters = _IndexDroppedMeanwhile(db["clusters"])
    second.ensure_indexes()
    assert second.by_id("old")["interests"] == ["a.x.y.z"]
