"""The root service manager's parts, built once per app and kept in `app.extensions["root"]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .clusters import Clusters
from .ipam import Allocator
from .jwt_keys import KeyProvider
from .outbox import Outbox
from .rebuild import Gate, Restorer
from .services import Services


@dataclass
class Root:
    db: Any
    allocator: Allocator
    clusters: Clusters
    services: Services
    outbox: Outbox
    keys: KeyProvider
    gate: Gate
    restorer: Restorer

    @classmethod
    def build(
        cls,
        db: Any,
        keys: KeyProvider,
        outbox_timeout: float = 2.0,
        rebuild_min: float = 3.0,
        rebuild_max: float = 30.0,
    ) -> Root:
        gate = Gate(db, min_wait=rebuild_min, max_wait=rebuild_max)
        allocator = Allocator(db, gate=gate.check)
        clusters = Clusters(db)
        outbox = Outbox(db, timeout=outbox_timeout)
        services = Services(db, allocator, clusters, outbox)
        for part in (allocator, clusters, services, outbox):
            part.ensure_indexes()
        restorer = Restorer(db, allocator, clusters, gate)
        return cls(db, allocator, clusters, services, outbox, keys, gate, restorer)
