"""The embedded store's document copies: equal to mongomock's own, sharing nothing mutable."""

from __future__ import annotations

import copy
import datetime
import random
from collections import OrderedDict

import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from oakestra_net import store, store_copy

NAIVE = datetime.datetime(2026, 1, 2, 3, 4, 5, 6000)
AWARE = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _value(r: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "none", "bytes", "oid", "naive", "aware", "date"]
    if depth < 4:
        kinds += ["list", "dict", "dict", "tuple", "odict", "intkeys"]
    kind = r.choice(kinds)
    scalars = {
        "str": lambda: f"s{r.randrange(100)}",
        "int": lambda: r.randrange(-5, 5),
        "float": lambda: r.random(),
        "bool": lambda: r.random() < 0.5,
        "none": lambda: None,
        "bytes": lambda: b"\x00\x01",
        "oid": ObjectId,
        "naive": lambda: NAIVE,
        "aware": lambda: AWARE,
        "date": lambda: datetime.date(2026, 1, 2),
    }
    if kind in scalars:
        return scalars[kind]()
    items = [_value(r, depth + 1) for _ in range(r.randrange(4))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "intkeys":
        return dict(enumerate(items))
    pairs = [(f"k{i}", item) for i, item in enumerate(items)]
    return OrderedDict(pairs) if kind == "odict" else dict(pairs)


def _containers(value, out: list) -> list:
    if isinstance(value, dict):
        out.append(value)
        for item in value.values():
            _containers(item, out)
    elif isinstance(value, list | tuple):
        out.append(value)
        for item in value:
            _containers(item, out)
    return out


def _shares_a_mutable_part(a, b) -> bool:
    mutable = {id(c) for c in _containers(a, []) if not isinstance(c, tuple)}
    return any(id(c) in mutable for c in _containers(b, []) if not isinstance(c, tuple))


@pytest.mark.parametrize("seed", range(20))
def test_copies_equal_mongomocks_and_share_nothing_mutable(seed: int) -> None:
    r = random.Random(seed)
    doc = {"_id": seed, "tree": [_value(r) for _ in range(6)], "ids": [f"n{i}" for i in range(50)]}
    deep = store_copy.deep_copy(doc)
    assert deep == copy.deepcopy(doc)
    assert not _shares_a_mutable_part(doc, deep)
    stored = OrderedDict(doc)  # how mongomock keeps documents
    deep = store_copy.deep_copy(stored)
    assert type(deep) is OrderedDict and deep == copy.deepcopy(stored)
    assert not _shares_a_mutable_part(stored, deep)
    for container in (dict, OrderedDict):
        fields = store_copy.field_copy(doc, container)
        theirs = store_copy.MONGOMOCK_FIELD_COPY(doc, container)
        assert fields == theirs
        # mongomock shallow-copies what is neither list nor dict (a tuple's items are shared)
        assert _shares_a_mutable_part(doc, fields) == _shares_a_mutable_part(doc, theirs)
    assert store_copy.aware(doc) == store_copy.MONGOMOCK_AWARE(doc)


def test_embedded_reads_and_writes_do_not_leak_references() -> None:
    jobs = store.connect("cluster", {})["jobs"]
    jobs.create_index("name", unique=True)
    jobs.insert_one({"_id": 1, "name": "a", "nodes": ["n1"], "at": NAIVE})
    jobs.insert_one({"_id": 2, "name": "b", "nodes": ["n2"]})
    found = jobs.find_one({"_id": 1})
    found["nodes"].append("mutated")
    assert found["at"].tzinfo is not None  # the client is tz-aware
    with pytest.raises(DuplicateKeyError):  # rolled back from the pre-update snapshot
        jobs.update_one({"_id": 2}, {"$set": {"name": "a"}, "$push": {"nodes": "n3"}})
    assert jobs.find_one({"_id": 1})["nodes"] == ["n1"]
    assert jobs.find_one({"_id": 2}) == {"_id": 2, "name": "b", "nodes": ["n2"]}
    assert jobs.find_one({"nodes": "n2"})["_id"] == 2
