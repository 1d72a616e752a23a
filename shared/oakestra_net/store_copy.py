"""Faster document copies for the embedded (mongomock) store.

mongomock copies a document, value by value in Python, for every result it returns
(`_copy_field`, then `make_datetime_timezone_aware_in_document` for tz-aware clients)
and before every update (`copy.deepcopy`, a snapshot to roll back a unique-index
violation). At about a microsecond per value, one document with a long array (a root's
cluster record with its 10,000 interests, a job with 1,000 interested nodes) cost
milliseconds per read and per write. Stored documents are trees of dicts, lists and
immutable scalars, so the versions here copy lists of scalars in one pass and leave
immutable values shared; anything else goes to mongomock's or `copy`'s own code, so
every copy equals what mongomock would have returned. `install()` puts them in place.
"""

from __future__ import annotations

import copy
import datetime
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import mongomock.collection
import mongomock.helpers
from bson import ObjectId

# immutable values that copying returns unchanged (or as an equal object)
_SHARED = frozenset({str, int, float, bool, type(None), bytes, ObjectId})
_IMMUTABLE = _SHARED | {datetime.datetime, datetime.date}
# mongomock's own versions, as imported (install() replaces the module attributes)
MONGOMOCK_AWARE: Callable[[Any], Any] = mongomock.helpers.make_datetime_timezone_aware_in_document
MONGOMOCK_FIELD_COPY: Callable[[Any, Any], Any] = mongomock.collection._copy_field


def deep_copy(value: Any, memo: dict | None = None) -> Any:
    """`copy.deepcopy(value)`, sooner for documents (no shared parts to preserve)."""
    if memo is not None:
        return copy.deepcopy(value, memo)
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is list:
        if set(map(type, value)) <= _IMMUTABLE:  # one pass in C: a 10,000-value array
            return value.copy()
        return [v if type(v) in _IMMUTABLE else deep_copy(v) for v in value]
    if kind is dict or kind is OrderedDict:  # mongomock stores documents as OrderedDicts
        out = kind()
        for k, v in value.items():
            if type(k) is not str:  # not a document's field name: copy as copy does
                return copy.deepcopy(value)
            out[k] = v if type(v) in _IMMUTABLE else deep_copy(v)
        return out
    return copy.deepcopy(value)


def field_copy(value: Any, container: Callable[[], Any]) -> Any:
    """mongomock's `_copy_field`: lists and dicts (as `container`) rebuilt, the rest copied."""
    if type(value) in _IMMUTABLE:
        return value
    if isinstance(value, list):
        if type(value) is list and set(map(type, value)) <= _IMMUTABLE:
            return value.copy()
        return [v if type(v) in _IMMUTABLE else field_copy(v, container) for v in value]
    if isinstance(value, dict):
        new = container()
        for key, item in value.items():
            new[key] = item if type(item) in _IMMUTABLE else field_copy(item, container)
        return new
    return copy.copy(value)


def aware(value: Any) -> Any:
    """mongomock's `make_datetime_timezone_aware_in_document`, skipping plain values."""
    kind = type(value)
    if kind in _SHARED:
        return value
    if kind is dict:
        return {k: v if type(v) in _SHARED else aware(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SHARED else aware(v) for v in value]
    return MONGOMOCK_AWARE(value)


class _CopyModule:
    """The `copy` module as mongomock's collection module sees it, `deepcopy` faster."""

    deepcopy = staticmethod(deep_copy)
    copy = staticmethod(copy.copy)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


def install() -> None:
    """Make mongomock copy documents with the functions above (idempotent)."""
    if not isinstance(mongomock.collection.copy, _CopyModule):
        mongomock.collection.copy = _CopyModule()  # type: ignore[assignment]
    mongomock.collection._copy_field = field_copy
    mongomock.helpers.make_datetime_timezone_aware_in_document = aware
