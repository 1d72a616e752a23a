"""A root on a new store allocates nothing until the clusters told it what is in use."""

from __future__ import annotations

import pytest
from rsm_payloads import X1_ID, X3_ID, register_cluster, service_payload

from root_service_manager import rebuild
from root_service_manager.app import create_app
from root_service_manager.jwt_keys import KeyProvider
from testsupport import wait_until

C1 = "192.0.2.10"
C2 = "192.0.2.20"

# What a cluster knows after the old root gave out these addresses.
X1_STATE = {
    "job_id": X1_ID,
    "job_name": "X.default.X1.default",
    "service_ip_list": [
        {"IpType": "RR", "Address": "10.30.0.1", "Address_v6": "fdff:2000::1"},
        {"IpType": "Closest", "Address": "10.30.0.2", "Address_v6": "fdff:1000::1"},
    ],
    "instance_list": [
        {
            "instance_number": 0,
            "instance_ip": "10.30.0.3",
            "instance_ip_v6": "fdff::1",
            "cluster_id": "c1",
            "namespace_ip": "10.16.0.2",
            "namespace_ip_v6": "fc00::2",
            "host_ip": "198.18.0.11",
            "host_port": 50103,
        },
        {"instance_number": 1, "instance_ip": "10.30.0.4", "instance_ip_v6": "fdff::2"},
    ],
}
SUBNETS = [{"subnet_addr": "10.16.0.0", "subnet_addr_v6": "fc00::"}]


def make_app(db, *, min_wait=0.0, max_wait=60.0):
    config = {"DB": db, "KEYS": KeyProvider(), "OUTBOX_AUTOSTART": False}
    return create_app({**config, "REBUILD_MIN": min_wait, "REBUILD_MAX": max_wait})


def client_from(app, address):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_allocation_waits_until_every_registered_cluster_reported(db):
    app = make_app(db)
    c1, c2 = client_from(app, C1), client_from(app, C2)
    register_cluster(c1, "c1", C1)
    register_cluster(c2, "c2", C2)
    assert c1.get("/api/net/state").get_json()["rebuilding"] is True

    refused = c1.post("/api/net/service/deploy", json=service_payload(X3_ID, "X3"))
    assert refused.status_code == 503
    assert refused.get_json()["reason"].startswith("rebuilding")
    assert c1.get("/api/net/subnet").status_code == 503

    pushed = c1.post("/api/net/cluster/state", json={"jobs": [X1_STATE], "subnets": SUBNETS})
    assert pushed.status_code == 200, pushed.get_json()
    assert pushed.get_json()["conflicts"] == []
    assert pushed.get_json()["reserved"] == 10
    assert c1.get("/api/net/subnet").status_code == 503, "c2 has not reported yet"
    assert c2.post("/api/net/cluster/state", json={"jobs": []}).status_code == 200

    assert c1.get("/api/net/state").get_json()["rebuilding"] is False
    assert app.test_client().get("/healthz").get_json()["rebuilding"] is False
    deployed = c1.post("/api/net/service/deploy", json=service_payload(X3_ID, "X3"))
    assert deployed.status_code == 200
    instance = {"_id": X3_ID, "instance_number": 0, "cluster_id": "c1"}
    assert c1.post("/api/net/instance/deploy", json=instance).status_code == 200
    x3 = c1.get("/api/net/service/X_default_X3_default/instances").get_json()
    new = {e[k] for e in x3["service_ip_list"] for k in ("Address", "Address_v6")}
    new |= {x3["instance_list"][0][k] for k in ("instance_ip", "instance_ip_v6")}
    old = {e[k] for e in X1_STATE["service_ip_list"] for k in ("Address", "Address_v6")}
    old |= {i[k] for i in X1_STATE["instance_list"] for k in ("instance_ip", "instance_ip_v6")}
    assert not new & old
    assert c1.get("/api/net/subnet").get_json()["subnet_addr"] != "10.16.0.0"


def test_restored_jobs_answer_table_queries_and_undeploys(db):
    app = make_app(db)
    c1 = client_from(app, C1)
    register_cluster(c1, "c1", C1)
    c1.post("/api/net/cluster/state", json={"jobs": [X1_STATE]})
    job = c1.get("/api/net/service/ip/10_30_0_1/instances").get_json()
    assert job["_id"] == X1_ID
    assert {i["instance_number"] for i in job["instance_list"]} == {0, 1}
    assert job["instance_list"][0]["host_ip"] == "198.18.0.11"
    assert app.extensions["root"].clusters.by_id("c1")["interests"] == ["X.default.X1.default"]
    # pushing again (another cluster caching the same job, or a retry) changes nothing
    again = c1.post("/api/net/cluster/state", json={"jobs": [X1_STATE]}).get_json()
    assert again["conflicts"] == []
    assert len(c1.get("/api/net/service/ip/10_30_0_1/instances").get_json()["instance_list"]) == 2
    assert c1.delete(f"/api/net/{X1_ID}/-1").get_json()["removed"] != []
    assert c1.delete(f"/api/net/service/{X1_ID}").status_code == 200
    assert app.extensions["root"].allocator.owner_of("service_v4", "10.30.0.1") is None


def test_an_address_held_by_another_owner_is_reported_not_taken(db):
    app = make_app(db)
    c1, c2 = client_from(app, C1), client_from(app, C2)
    c1.post("/api/net/cluster/state", json={"jobs": [X1_STATE]})
    other = {**X1_STATE, "job_id": X3_ID, "job_name": "X.default.X3.default"}
    taken = {"instance_number": 0, "instance_ip": "10.30.0.3", "instance_ip_v6": "fdff::9"}
    other["instance_list"] = [taken]
    answer = c2.post("/api/net/cluster/state", json={"jobs": [other]}).get_json()
    assert any("10.30.0.3" in c and "X.default.X1.default" in c for c in answer["conflicts"])
    assert any("10.30.0.1" in c for c in answer["conflicts"])
    owner = app.extensions["root"].allocator.owner_of("service_v4", "10.30.0.3")
    assert owner["job_name"] == "X.default.X1.default"


@pytest.mark.parametrize(
    "body",
    [[], {"jobs": "x"}, {"jobs": [{"job_name": "bad"}]}, {"subnets": [{"subnet_addr": "1.2.3.4"}]}],
)
def test_bad_pushes_are_refused_or_skipped_never_a_500(db, body):
    c1 = client_from(make_app(db), C1)
    response = c1.post("/api/net/cluster/state", json=body)
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert response.get_json()["conflicts"] and response.get_json()["reserved"] == 0


def test_a_silent_cluster_delays_allocation_by_max_wait_only(db):
    app = make_app(db, max_wait=0.5)
    c1 = client_from(app, C1)
    register_cluster(c1, "c1", C1)  # an upstream cluster manager: it never pushes
    assert c1.get("/api/net/subnet").status_code == 503
    wait_until(lambda: c1.get("/api/net/subnet").status_code == 200, timeout=5)


def test_a_known_store_is_not_rebuilt(db):
    first = make_app(db, min_wait=0.0, max_wait=0.0)
    assert client_from(first, C1).get("/api/net/subnet").status_code == 200
    second = make_app(db, min_wait=60.0, max_wait=60.0)  # a restart on the same database
    assert second.extensions["root"].gate.new_store is False
    assert client_from(second, C1).get("/api/net/subnet").status_code == 200


def test_a_worker_losing_the_first_upsert_reads_the_winners_marker(db):
    # SecantusDB answers the loser of two concurrent upserts with no document (MongoDB
    # returns the winner's); the second worker booting on a new store must not die
    first = rebuild.Gate(db, min_wait=0.0, max_wait=60.0)
    meta = db[rebuild.META]

    class LosingUpsert:
        def __getattr__(self, name):
            return getattr(meta, name)

        def find_one_and_update(self, *args, **kwargs):
            meta.find_one_and_update(*args, **kwargs)
            return None

    class Store(dict):
        def __getitem__(self, name):
            return LosingUpsert() if name == rebuild.META else db[name]

    second = rebuild.Gate(Store(), min_wait=0.0, max_wait=60.0)
    assert second.generation == first.generation and second.new_store is False


def test_state_tells_a_cluster_the_jobs_it_follows(db):
    """A cluster that lost its cache fetches these again (see the cluster's root watch)."""
    app = make_app(db, max_wait=0.0)
    c1, c2 = client_from(app, C1), client_from(app, C2)
    register_cluster(c1, "c1", C1)
    register_cluster(c2, "c2", C2)
    assert c1.get("/api/net/state").get_json()["interests"] == []
    assert c1.post("/api/net/service/deploy", json=service_payload(X3_ID, "X3")).status_code == 200
    assert c1.get("/api/net/service/X_default_X3_default/instances").status_code == 200
    assert c1.get("/api/net/state").get_json()["interests"] == ["X.default.X3.default"]
    assert c2.get("/api/net/state").get_json()["interests"] == []
    assert client_from(app, "192.0.2.99").get("/api/net/state").get_json()["interests"] == []


def test_unknown_while_rebuilding_is_503_not_404(db):
    """Not found may be not restored yet: a final 404 would make a cluster tell its nodes
    a running service is gone."""
    app = make_app(db)
    c1 = client_from(app, C1)
    register_cluster(c1, "c1", C1)
    waiting = c1.get("/api/net/service/X_default_X1_default/instances")
    assert waiting.status_code == 503 and waiting.get_json()["reason"].startswith("rebuilding")
    assert c1.delete(f"/api/net/{X1_ID}/0").status_code == 503
    assert c1.post("/api/net/cluster/state", json={"jobs": [X1_STATE]}).status_code == 200
    assert c1.get("/api/net/service/X_default_X1_default/instances").status_code == 200
    assert c1.get("/api/net/service/X_default_X9_default/instances").status_code == 404


def test_state_lists_the_callers_node_subnets_and_a_new_store_takes_them_back(db):
    """A cluster that lost its store (embedded) learns its nodes' subnets here, so that a
    root losing its store next does not hand them out again."""
    app = make_app(db, max_wait=0.0)
    c1, c2 = client_from(app, C1), client_from(app, C2)
    register_cluster(c1, "c1", C1)
    register_cluster(c2, "c2", C2)
    subnet = c1.get("/api/net/subnet").get_json()
    state = c1.get("/api/net/state").get_json()["subnets"]
    assert state == {"v4": [subnet["subnet_addr"]], "v6": [subnet["subnet_addr_v6"]]}
    assert c2.get("/api/net/state").get_json()["subnets"] == {"v4": [], "v6": []}

    fresh = make_app(db.client[f"{db.name}_lost"])  # the root restarted on a new store
    new_c1 = client_from(fresh, C1)
    register_cluster(new_c1, "c1", C1)
    pushed = {"subnets": [{"subnet_addr": state["v4"][0]}, {"subnet_addr_v6": state["v6"][0]}]}
    answer = new_c1.post("/api/net/cluster/state", json=pushed).get_json()
    assert answer["reserved"] == 2 and answer["conflicts"] == []
    again = new_c1.get("/api/net/subnet").get_json()
    assert again["subnet_addr"] != subnet["subnet_addr"]
    assert again["subnet_addr_v6"] != subnet["subnet_addr_v6"]
    assert new_c1.get("/api/net/state").get_json()["subnets"]["v4"] == sorted(
        [subnet["subnet_addr"], again["subnet_addr"]]
    )


def test_the_brief_state_leaves_the_lists_out(db):
    app = make_app(db, max_wait=0.0)
    c1 = client_from(app, C1)
    register_cluster(c1, "c1", C1)
    assert c1.get("/api/net/subnet").status_code == 200
    full = c1.get("/api/net/state").get_json()
    brief = c1.get("/api/net/state?brief=1").get_json()
    assert full["subnets"]["v4"] and "interests" in full
    assert brief == {k: v for k, v in full.items() if k not in ("interests", "subnets")}
    assert brief["cluster"]["cluster_id"] == "c1"
    assert (
        client_from(app, "192.0.2.99").get("/api/net/state?brief=true").get_json()["cluster"]
        is None
    )
    refused = c1.get("/api/net/state?brief=yes")
    assert refused.status_code == 400 and "brief" in refused.get_json()["reason"]
