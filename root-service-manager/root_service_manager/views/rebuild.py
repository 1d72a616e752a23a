"""The root's generation, and clusters pushing their state into a new store (ours, not upstream's).

`GET /api/net/state` tells a cluster which store generation it talks to, whether
the root is still rebuilding and how it registered the caller;
`POST /api/net/cluster/state` takes what a cluster knows is in use (see
`rebuild.py`). The caller is identified by its address, like every cluster call; an
unregistered caller's addresses are restored too.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from oakestra_net.addressing import Pool
from oakestra_net.http_errors import ApiError
from oakestra_net.http_input import json_body

from ..schemas import ClusterState

bp = Blueprint("rebuild", __name__, url_prefix="/api/net")


@bp.get("/state")
def root_state():
    """The generation, how the caller is registered (None: not), so that a cluster can
    register itself again as it was should the root lose its store, and the jobs the
    root records the caller's interest in (what it caches), so that a cluster that lost
    its cache can fetch them again before a root restart asks it for its state.

    `?brief=1` (ours too): without `interests` and `subnets`. Clusters need the lists once
    per process and poll the rest every second; the lists grow with the jobs and nodes
    (10,000+ interests, 2,000+ subnets: a tenth of a busy root's CPU)."""
    root = current_app.extensions["root"]
    if _brief(request.args.get("brief")):
        cluster = root.clusters.by_address(request.remote_addr)
        return jsonify({**root.gate.state(), "cluster": _registration(cluster)})
    cluster = root.clusters.by_address(request.remote_addr, interests=True)
    interests = sorted(cluster.get("interests") or []) if cluster is not None else []
    subnets: dict[str, list[str]] = {"v4": [], "v6": []}
    if cluster is not None:
        for family, pool in (("v4", Pool.SUBNET_V4), ("v6", Pool.SUBNET_V6)):
            subnets[family] = root.allocator.owned_by_cluster(pool, cluster["cluster_id"])
    state = {**root.gate.state(), "cluster": _registration(cluster), "interests": interests}
    return jsonify({**state, "subnets": subnets})


def _registration(cluster: dict | None) -> dict | None:
    if cluster is None:
        return None
    return {k: cluster.get(k) for k in ("cluster_id", "cluster_address", "cluster_port")}


def _brief(value: str | None) -> bool:
    if value in (None, "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise ApiError(400, f"query 'brief' must be 1, true, 0 or false, got {value[:50]!r}")


@bp.post("/cluster/state")
def cluster_state():
    body = json_body(ClusterState).model_dump()
    return jsonify(current_app.extensions["root"].restorer.restore(request.remote_addr, body))
