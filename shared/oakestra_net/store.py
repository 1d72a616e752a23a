"""The MongoDB connection of the service managers: a real server, or an embedded in-memory one.

`mongo_url_from_env` reads Oakestra's variables (`MONGO_URL`, or `ROOT_MONGO_URL` +
`ROOT_MONGO_PORT` / `CLUSTER_MONGO_URL` + `CLUSTER_MONGO_PORT`); `connect` returns a
pymongo `Database`, or, when no server is configured (or `mongomock://`), a mongomock one.

Callers rely on single operations being atomic (`find_one_and_update` with `$inc`, an
insert under a unique index, `$addToSet`), as a server guarantees. mongomock does not:
concurrent `find_one_and_update` calls return the same value. So the embedded database is
wrapped so that every collection operation, cursor materialisation included, holds one
store-wide lock, which emulates the server's per-operation atomicity (it is not a lock
callers can use across operations). Errors are pymongo's own exception classes.

Each embedded `connect` call returns a new, empty store: a process connects once and
shares the database. Lookups use hash indexes (`store_index`) and documents are copied
by `store_copy`, so neither costs in proportion to the collection or to a long array.
Indexes and documents are the callers' business.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import mongomock
import mongomock.collection
import mongomock.command_cursor
import pymongo

from oakestra_net import store_copy, store_index
from oakestra_net.log import get_logger

log = get_logger(__name__)

# Oakestra's variable names per component: (host, port)
_OAKESTRA_VARIABLES = {
    "root": ("ROOT_MONGO_URL", "ROOT_MONGO_PORT"),
    "cluster": ("CLUSTER_MONGO_URL", "CLUSTER_MONGO_PORT"),
}
COMPONENTS = tuple(_OAKESTRA_VARIABLES)
EMBEDDED_SCHEME = "mongomock://"
_URL_SCHEMES = ("mongodb://", "mongodb+srv://")
_embedded_warned = False
_warn_lock = threading.Lock()


def mongo_url_from_env(component: str, env: Mapping[str, str] = os.environ) -> str | None:
    """The MongoDB URL `component` should use, or None for the embedded store."""
    _check_component(component)
    url = env.get("MONGO_URL", "").strip()
    if url:
        return _checked_url(url, "MONGO_URL")
    host_var, port_var = _OAKESTRA_VARIABLES[component]
    host, port = env.get(host_var, "").strip(), env.get(port_var, "").strip()
    if host.startswith(EMBEDDED_SCHEME):
        return None
    if not host:
        if port:
            raise ValueError(f"{port_var}={port!r} is set but {host_var} is not")
        return None
    if "://" in host or "/" in host:
        raise ValueError(f"{host_var}={host!r} must be a host name or address; use MONGO_URL")
    return f"mongodb://{_url_host(host)}:{_port(port, port_var)}/"


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"store component {component!r} is not one of {', '.join(COMPONENTS)}")


def _checked_url(url: str, variable: str) -> str | None:
    if url.startswith(EMBEDDED_SCHEME):
        return None
    if not url.startswith(_URL_SCHEMES):
        raise ValueError(f"{variable}={url!r} is not a mongodb:// or mongodb+srv:// URL")
    return url


def _url_host(host: str) -> str:
    bare = host.removeprefix("[").removesuffix("]")
    return f"[{bare}]" if ":" in bare else bare


def _port(text: str, variable: str) -> int:
    if not text:
        return 27017
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{variable}={text!r} is not a TCP port")
    return int(text)


def connect(
    component: str, env: Mapping[str, str] = os.environ, *, database: str | None = None
) -> Any:
    """A database handle for `component`: real MongoDB if configured, else the embedded store.

    Nothing is sent to a real server here; the first operation waits at most 5 s for it.
    """
    url = mongo_url_from_env(component, env)
    if url is None:
        _warn_embedded(component)
        return _EmbeddedClient()[database or f"oakestra_net_{component}"]
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000, tz_aware=True)
    name = database or _database_from_url(url) or f"oakestra_net_{component}"
    log.info("store: MongoDB", component=component, url=_redacted(url), database=name)
    return client[name]


def is_embedded(db: Any) -> bool:
    return isinstance(db, _EmbeddedDatabase | mongomock.Database)


def _database_from_url(url: str) -> str | None:
    path = urlsplit(url).path.strip("/")
    return path or None


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _warn_embedded(component: str) -> None:
    global _embedded_warned
    with _warn_lock:
        if _embedded_warned:
            return
        _embedded_warned = True
    log.warning(
        "STORE IS IN MEMORY AND NOT PERSISTENT: no MongoDB configured (set MONGO_URL); "
        "all state is lost on exit and the store serves this one process only",
        component=component,
    )


class _Locked:
    """Proxy that runs every method of the wrapped mongomock object under the store lock."""

    def __init__(self, target: Any, lock: threading.RLock) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_lock", lock)

    def __getattr__(self, name: str) -> Any:
        value = self._wrap(getattr(self._target, name))
        if isinstance(value, _Locked) or not callable(value) or isinstance(value, type):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return self._wrap(value(*args, **kwargs))

        return locked

    def __getitem__(self, key: Any) -> Any:
        with self._lock:
            return self._wrap(self._target[key])

    def __eq__(self, other: object) -> bool:
        other_target = other._target if isinstance(other, _Locked) else other
        return self._target == other_target

    def __hash__(self) -> int:
        return hash(self._target)

    def __repr__(self) -> str:
        return f"Embedded({self._target!r})"

    def __bool__(self) -> bool:
        raise NotImplementedError(
            f"{type(self).__name__} has no truth value; compare with None instead"
        )

    def _wrap(self, value: Any) -> Any:
        if value is self._target:
            return self
        for kind, wrapper in _WRAPPERS:
            if isinstance(value, kind):
                return wrapper(value, self._lock)
        return value


class _EmbeddedClient(_Locked):
    def __init__(self) -> None:
        store_copy.install()
        super().__init__(mongomock.MongoClient(tz_aware=True), threading.RLock())


class _EmbeddedDatabase(_Locked):
    pass


class _EmbeddedCollection(_Locked):
    """A collection whose lookups use hash indexes (`store_index`) instead of scans."""

    def __init__(self, target: Any, lock: threading.RLock) -> None:
        super().__init__(target, lock)
        with lock:
            object.__setattr__(self, "_index", store_index.index_of(target))

    def __getattr__(self, name: str) -> Any:
        value = self._wrap(getattr(self._target, name))
        if (
            name in _READ_OPERATIONS
            or isinstance(value, _Locked)
            or not callable(value)
            or isinstance(value, type)
        ):
            return super().__getattr__(name)
        index = self._index

        def locked_write(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                index.writing += 1
                try:
                    return self._wrap(value(*args, **kwargs))
                finally:
                    index.writing -= 1
                    if not index.writing:
                        index.end_write()

        return locked_write


# Operations that never change documents; every other method counts as a write.
_READ_OPERATIONS = frozenset(
    {
        "find",
        "find_one",
        "count_documents",
        "estimated_document_count",
        "distinct",
        "aggregate",
        "index_information",
        "list_indexes",
        "options",
        "with_options",
    }
)


class _EmbeddedCursor(_Locked):
    """A cursor whose results are computed under the lock (on the first `next`)."""

    def __iter__(self) -> _EmbeddedCursor:
        return self

    def __next__(self) -> Any:
        with self._lock:
            return next(self._target)

    def __enter__(self) -> _EmbeddedCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __bool__(self) -> bool:
        return True


_WRAPPERS: tuple[tuple[type, type[_Locked]], ...] = (
    (mongomock.MongoClient, _Locked),
    (mongomock.Database, _EmbeddedDatabase),
    (mongomock.Collection, _EmbeddedCollection),
    (mongomock.collection.Cursor, _EmbeddedCursor),
    (mongomock.command_cursor.CommandCursor, _EmbeddedCursor),
)
