"""Hash indexes for the embedded (mongomock) store, so lookups stop scanning collections.

mongomock answers every query, `_id` lookups included, by testing every document of
the collection, and checks a unique index by another scan per write. This module
gives a mongomock collection what a server has: the documents a filter can match
come from an index (`_id`, or the first field of any index created on the
collection), and only those are tested with mongomock's own matcher, so results are
exactly mongomock's. Filters no index serves still scan.

mongomock updates stored documents in place. So every document a write operation
visits is marked dirty, and dirty documents are indexed again before the next
lookup; inserts, deletes and replacements go through the collection's storage and
are seen there. The caller (`store`) holds the store-wide lock around every
operation and says which operations write.

An index maps each value at a field path (through arrays, as MongoDB indexes
"multikey") to the `_id`s holding it. Values that cannot be hashed (documents,
arrays inside arrays) put their document on the field's "always a candidate" list.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from mongomock.filtering import filter_applies
from mongomock.store import CollectionStore

_MISSING = object()
_SCALARS = frozenset({str, int, float, bool, type(None)})  # hashable, never an array or document


class CollectionIndex:
    """The indexes of one collection; lives on its mongomock storage object."""

    def __init__(self, store: CollectionStore) -> None:
        self.store = store
        self.writing = 0  # > 0 while a write operation runs (under the store lock)
        self._order: dict[Hashable, int] = {}
        self._sequence = itertools.count()
        self._fields: tuple[str, ...] = ()
        self._maps: dict[str, dict[Hashable, set]] = {}
        self._unhashable: dict[str, set] = {}
        self._keys: dict[Hashable, dict[str, list[Hashable]]] = {}
        self._dirty: set = set()
        self._touched: set = set()
        self.rebuild()

    # -- maintenance ------------------------------------------------------------------

    def rebuild(self) -> None:
        fields = []
        for spec in self.store.indexes.values():
            first = spec["key"][0][0]
            if first != "_id" and first not in fields:
                fields.append(first)
        self._fields = tuple(fields)
        self._maps = {f: {} for f in self._fields}
        self._unhashable = {f: set() for f in self._fields}
        self._keys = {}
        self._dirty = set()
        for doc_id, doc in self.store._documents.items():
            self._order.setdefault(doc_id, next(self._sequence))
            self._add(doc_id, doc)

    def end_write(self) -> None:
        """A write operation ended: what it visited may have changed after any refresh."""
        self._dirty |= self._touched
        self._touched.clear()

    def stored(self, doc_id: Hashable) -> None:
        self._order.setdefault(doc_id, next(self._sequence))
        self._dirty.add(doc_id)

    def removed(self, doc_id: Hashable) -> None:
        self._drop(doc_id)
        self._dirty.discard(doc_id)
        self._order.pop(doc_id, None)

    def cleared(self) -> None:
        self._order = {}
        self.rebuild()

    def _refresh(self) -> None:
        if not self._dirty:
            return
        documents = self.store._documents
        for doc_id in self._dirty:
            doc = documents.get(doc_id)
            if doc is None:
                self._drop(doc_id)
            elif doc_id in self._keys:
                self._reindex(doc_id, doc)
            else:
                self._add(doc_id, doc)
        self._dirty.clear()

    def _keys_of(
        self, doc: dict, doc_id: Hashable = _MISSING
    ) -> tuple[dict[str, list[Hashable]], set[str]]:
        """The hashable values of `doc` per indexed field, and the fields with others.

        With `doc_id` (the document is indexed already), an array that only grew at its
        end has just its new values checked: `$addToSet` on a 10,000-value array.
        """
        keys: dict[str, list[Hashable]] = {}
        unhashable: set[str] = set()
        old = self._keys.get(doc_id) if doc_id is not _MISSING else None
        for name in self._fields:
            plain = doc.get(name) if "." not in name else None
            if type(plain) is list:
                before = old.get(name) if old is not None else None
                if (
                    before is not None
                    and len(plain) >= len(before)
                    and doc_id not in self._unhashable[name]
                    and plain[: len(before)] == before
                    and set(map(type, plain[len(before) :])) <= _SCALARS
                ) or set(map(type, plain)) <= _SCALARS:
                    keys[name] = list(plain)  # a snapshot: mongomock changes arrays in place
                    continue
            values: list[Hashable] = []
            for value in _values(doc, name.split(".")):
                if isinstance(value, dict | list):
                    unhashable.add(name)
                    continue
                try:
                    hash(value)
                except TypeError:
                    unhashable.add(name)
                    continue
                values.append(value)
            keys[name] = values
        return keys, unhashable

    def _add(self, doc_id: Hashable, doc: dict) -> None:
        if not self._fields:
            return
        keys, unhashable = self._keys_of(doc)
        for name, values in keys.items():
            index = self._maps[name]
            for value in values:
                index.setdefault(value, set()).add(doc_id)
        for name in unhashable:
            self._unhashable[name].add(doc_id)
        self._keys[doc_id] = keys

    def _reindex(self, doc_id: Hashable, doc: dict) -> None:
        """Index a changed document again, touching only the values that changed.

        A write usually changes a few values of a document whose arrays can be long
        (a cluster's 10,000 interests, a job's 1,000 interested nodes): dropping and
        adding every value again made each such write cost milliseconds.
        """
        old = self._keys[doc_id]
        keys, unhashable = self._keys_of(doc, doc_id)
        for name, values in keys.items():
            before = old.get(name, [])
            if values != before:
                index = self._maps[name]
                if len(values) > len(before) and values[: len(before)] == before:
                    for value in values[len(before) :]:  # appended: nothing left the index
                        index.setdefault(value, set()).add(doc_id)
                else:
                    self._replace(index, doc_id, before, values)
            if name in unhashable:
                self._unhashable[name].add(doc_id)
            else:
                self._unhashable[name].discard(doc_id)
        self._keys[doc_id] = keys

    @staticmethod
    def _replace(
        index: dict[Hashable, set], doc_id: Hashable, before: list[Hashable], values: list[Hashable]
    ) -> None:
        kept = set(values)
        for value in set(before) - kept:
            ids = index.get(value)
            if ids is not None:
                ids.discard(doc_id)
                if not ids:
                    del index[value]
        for value in kept.difference(before):
            index.setdefault(value, set()).add(doc_id)

    def _drop(self, doc_id: Hashable) -> None:
        keys = self._keys.pop(doc_id, None)
        if keys is None:
            return
        for name, values in keys.items():
            index = self._maps[name]
            for value in values:
                ids = index.get(value)
                if ids is not None:
                    ids.discard(doc_id)
                    if not ids:
                        del index[value]
            self._unhashable[name].discard(doc_id)

    # -- lookups ----------------------------------------------------------------------

    def iter_documents(self, filter: Any) -> Iterator[dict]:
        """What mongomock's `_iter_documents` yields, from candidates instead of a scan."""
        documents = self.store._documents
        if not documents:
            filter_applies(filter, {})  # mongomock validates the filter even then
            return iter(())
        self._refresh()
        ids = self._candidates(filter) if isinstance(filter, dict) else None
        if ids is None:
            candidates = list(documents.values())
        else:
            order = self._order
            found = [i for i in ids if i in documents]
            found.sort(key=lambda i: order.get(i, 0))
            candidates = [documents[i] for i in found]
        return self._matching(filter, candidates)

    def _matching(self, filter: Any, candidates: list[dict]) -> Iterator[dict]:
        for doc in candidates:
            if filter_applies(filter, doc):
                if self.writing:
                    self._dirty.add(doc["_id"])
                    self._touched.add(doc["_id"])
                yield doc

    def _candidates(self, filter: dict) -> set | None:
        """The `_id`s that can match, or None if no index serves the filter."""
        best: set | None = None
        for name, condition in filter.items():
            ids: set | None
            if name == "$and" and isinstance(condition, list):
                ids = _smallest(
                    self._candidates(c) if isinstance(c, dict) else None for c in condition
                )
            elif name == "$or" and isinstance(condition, list) and condition:
                ids = self._union(condition)
            elif name == "_id":
                ids = self._by_id(condition)
            elif name in self._maps:
                ids = self._by_field(name, condition)
            else:
                ids = None
            if ids is not None and (best is None or len(ids) < len(best)):
                best = ids
                if not best:
                    break
        return best

    def _union(self, branches: list) -> set | None:
        out: set = set()
        for branch in branches:
            ids = self._candidates(branch) if isinstance(branch, dict) else None
            if ids is None:
                return None
            out |= ids
        return out

    def _by_id(self, condition: Any) -> set | None:
        values = _equal_values(condition)
        if values is None:
            return None
        return {v for v in values if v in self.store._documents}

    def _by_field(self, name: str, condition: Any) -> set | None:
        values = _equal_values(condition)
        if values is None:
            return None
        index = self._maps[name]
        out = set(self._unhashable[name])
        for value in values:
            out |= index.get(value, set())
        return out


def _equal_values(condition: Any) -> list | None:
    """The values an equality condition (`v`, `{"$eq": v}`, `{"$in": [...]}`) accepts."""
    if isinstance(condition, dict):
        if len(condition) != 1:
            return None
        ((operator, operand),) = condition.items()
        if operator == "$eq":
            values = [operand]
        elif operator == "$in" and isinstance(operand, list | tuple):
            values = list(operand)
        else:
            return None
    else:
        values = [condition]
    for value in values:
        # None also matches a missing field, a list matches as a whole: not in the index
        if value is None or isinstance(value, dict | list | tuple):
            return None
        try:
            hash(value)
        except TypeError:
            return None
    return values


def _smallest(sets: Iterable[set | None]) -> set | None:
    best = None
    for ids in sets:
        if ids is not None and (best is None or len(ids) < len(best)):
            best = ids
    return best


def _values(node: Any, parts: list[str]) -> Iterator[Any]:
    """Every value at the dotted path, through arrays (as a multikey index sees them)."""
    if not parts:
        if isinstance(node, list):
            yield from node
        else:
            yield node
        return
    if isinstance(node, dict):
        child = node.get(parts[0], _MISSING)
        if child is not _MISSING:
            yield from _values(child, parts[1:])
    elif isinstance(node, list):
        for element in node:
            if isinstance(element, dict):
                yield from _values(element, parts)


class IndexedCollectionStore(CollectionStore):
    """mongomock's collection storage, telling its `CollectionIndex` what changed."""

    oak_index: CollectionIndex

    def __setitem__(self, key: Any, val: Any) -> None:
        super().__setitem__(key, val)
        self.oak_index.stored(key)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.oak_index.removed(key)

    def drop(self) -> None:
        super().drop()
        self.oak_index.cleared()

    def create_index(self, index_name: str, index_dict: dict) -> None:
        super().create_index(index_name, index_dict)
        self.oak_index.rebuild()

    def drop_index(self, index_name: str) -> None:
        super().drop_index(index_name)
        self.oak_index.rebuild()


def index_of(collection: Any) -> CollectionIndex:
    """The index of a mongomock collection, attached on first use."""
    store = collection._store
    if not isinstance(store, IndexedCollectionStore):
        store.__class__ = IndexedCollectionStore
        store.oak_index = CollectionIndex(store)
    index = store.oak_index
    bound = collection.__dict__.get("_iter_documents")
    if getattr(bound, "__self__", None) is not index:
        collection._iter_documents = index.iter_documents
    return index
