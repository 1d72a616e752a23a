"""The whole Oakestra sequence against the root, with the system manager's payloads."""

from __future__ import annotations

from bson import ObjectId
from rsm_payloads import X1_ID, X3_ID, register_cluster, service_payload

from oakestra_net.addressing import Pool


def _deploy_example(client):
    register_cluster(client)
    for job_id, name, rr in ((X1_ID, "X1", "10.30.0.1"), (X3_ID, "X3", "10.30.1.30")):
        response = client.post("/api/net/service/deploy", json=service_payload(job_id, name, rr))
        assert response.status_code == 200, response.get_json()
    for job_id, number in ((X1_ID, 0), (X1_ID, 1), (X3_ID, 0)):
        body = {"_id": job_id, "instance_number": number, "cluster_id": "c1"}
        response = client.post("/api/net/instance/deploy", json=body)
        assert response.status_code == 200, response.get_json()


def test_cluster_registration_is_stored_active(client, root):
    response = client.post(
        "/api/net/cluster",
        json={"cluster_id": "c1", "cluster_address": "::ffff:192.0.2.10", "cluster_port": "10110"},
    )
    assert response.status_code == 200
    assert response.get_json()["message"] == "cluster registered"
    stored = root.clusters.by_id("c1")
    assert stored["cluster_address"] == "192.0.2.10"
    assert stored["cluster_port"] == 10110
    assert stored["status"] == "ACTIVE"
    assert stored["interests"] == []


def test_service_deploy_allocates_rr_and_closest(client, root):
    register_cluster(client)
    response = client.post(
        "/api/net/service/deploy", json=service_payload(X3_ID, "X3", "10.30.1.30")
    )
    body = response.get_json()
    assert response.status_code == 200
    assert body["message"] == "Instance info added"
    assert body["job_name"] == "X.default.X3.default"
    rr, closest = body["service_ip_list"]
    assert rr == {"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff:2000::1"}
    assert closest["IpType"] == "Closest"
    assert closest["Address"] == "10.30.0.1"  # first free address of the shared v4 pool
    assert closest["Address_v6"] == "fdff:1000::1"
    job = root.db["jobs"].find_one({"_id": ObjectId(X3_ID)})
    assert job["job_name"] == "X.default.X3.default"
    assert job["code"] == "docker.io/X/X3"  # descriptor fields are kept
    assert job["instance_list"] == []
    assert root.allocator.owner_of(Pool.SERVICE_V4, "10.30.1.30")["kind"] == "rr"


def test_redeploying_a_service_changes_nothing(client, root):
    payload = service_payload(X1_ID, "X1", "10.30.0.1")
    first = client.post("/api/net/service/deploy", json=payload).get_json()
    used = root.allocator.used(Pool.SERVICE_V4)
    again = client.post("/api/net/service/deploy", json=payload)
    assert again.status_code == 200
    assert again.get_json()["service_ip_list"] == first["service_ip_list"]
    assert root.allocator.used(Pool.SERVICE_V4) == used


def test_full_sequence(client, root):
    _deploy_example(client)
    x1 = root.db["jobs"].find_one({"_id": ObjectId(X1_ID)})
    instance_ips = [i["instance_ip"] for i in x1["instance_list"]]
    assert len(set(instance_ips)) == 2
    assert "10.30.0.1" not in instance_ips  # taken by X1's RR IP
    assert all(i["cluster_id"] == "c1" for i in x1["instance_list"])

    # the cluster queries X3 by IP (path encoding '_' for '.') and becomes interested
    response = client.get("/api/net/service/ip/10_30_1_30/instances")
    assert response.status_code == 200
    job = response.get_json()
    assert job["_id"] == X3_ID
    assert job["job_name"] == "X.default.X3.default"
    assert job["instance_list"][0]["instance_number"] == 0
    assert root.clusters.by_id("c1")["interests"] == ["X.default.X3.default"]

    # the cluster reports where X3.0 runs; the interested cluster gets a push queued
    status = {
        "job_id": X3_ID,
        "instances": [
            {
                "instance_number": 0,
                "namespace_ip": "10.16.0.66",
                "namespace_ip_v6": "fc00::102",
                "host_ip": "198.18.0.12",
                "host_port": "50103",
            }
        ],
    }
    response = client.post("/api/net/service/net_deploy_status", json=status)
    assert response.status_code == 200
    assert response.get_json() == {
        "message": "Status updated",
        "updated": [0],
        "unknown_instances": [],
    }
    x3 = root.services.find_by_name("X.default.X3.default")
    located = x3["instance_list"][0]
    assert located["namespace_ip"] == "10.16.0.66"
    assert located["host_port"] == 50103
    queued = list(root.db["outbox"].find())
    assert [(m["cluster_id"], m["body"]) for m in queued] == [
        ("c1", {"job_name": "X.default.X3.default", "instance_number": 0, "type": "DEPLOYMENT"})
    ]

    # by name, and the instance IP resolves to the same job
    by_name = client.get("/api/net/service/X_default_X3_default/instances").get_json()
    assert by_name["instance_list"][0]["host_ip"] == "198.18.0.12"
    instance_ip = located["instance_ip"]
    assert (
        client.get(f"/api/net/service/ip/{instance_ip.replace('.', '_')}/instances").status_code
        == 200
    )
    v6 = located["instance_ip_v6"]
    assert client.get(f"/api/net/service/ip/{v6}/instances").get_json()["_id"] == X3_ID

    # undeploy X3.0: its instance IPs go back to the pool, the cluster is told
    response = client.delete(f"/api/net/{X3_ID}/0")
    assert response.status_code == 200
    assert response.get_json() == {"message": "Instance info cleared", "removed": [0]}
    assert root.allocator.owner_of(Pool.SERVICE_V4, instance_ip) is None
    assert root.allocator.owner_of(Pool.INSTANCE_V6, v6) is None
    last = root.db["outbox"].find_one(sort=[("_id", -1)])
    assert last["body"] == {
        "job_name": "X.default.X3.default",
        "instance_number": 0,
        "type": "UNDEPLOYMENT",
    }
    # again: nothing left to remove, still fine
    assert client.delete(f"/api/net/{X3_ID}/0").get_json()["removed"] == []

    # service removal returns RR and Closest addresses and drops the interest
    response = client.delete(f"/api/net/service/{X3_ID}")
    assert response.status_code == 200
    assert response.get_json()["message"] == "Job removed successfully"
    assert root.allocator.owner_of(Pool.SERVICE_V4, "10.30.1.30") is None
    assert root.clusters.by_id("c1")["interests"] == []
    assert client.get("/api/net/service/X_default_X3_default/instances").status_code == 404


def test_service_with_instances_cannot_be_removed(client, root):
    _deploy_example(client)
    response = client.delete(f"/api/net/service/{X1_ID}")
    assert response.status_code == 400
    assert "still deployed" in response.get_json()["reason"]
    # scale to zero the way the system manager does: -1 once per instance
    assert client.delete(f"/api/net/{X1_ID}/-1").get_json()["removed"] == [0, 1]
    assert client.delete(f"/api/net/{X1_ID}/-1").get_json()["removed"] == []
    assert client.delete(f"/api/net/service/{X1_ID}").status_code == 200


def test_instance_redeploy_is_idempotent_and_moves_between_clusters(client, root):
    _deploy_example(client)
    body = {"_id": X1_ID, "instance_number": 0, "cluster_id": "c1"}
    first = client.post("/api/net/instance/deploy", json=body).get_json()["instance"]
    used = root.allocator.used(Pool.SERVICE_V4)
    again = client.post("/api/net/instance/deploy", json=body).get_json()["instance"]
    assert again["instance_ip"] == first["instance_ip"]
    assert root.allocator.used(Pool.SERVICE_V4) == used
    moved = client.post("/api/net/instance/deploy", json={**body, "cluster_id": "c2"})
    assert moved.get_json()["instance"]["cluster_id"] == "c2"
    assert moved.get_json()["instance"]["instance_ip"] == first["instance_ip"]


def test_interest_removal_by_caller_address(client, stranger, root):
    _deploy_example(client)
    client.get("/api/net/service/X_default_X1_default/instances")
    assert root.clusters.by_id("c1")["interests"] == ["X.default.X1.default"]
    assert stranger.delete("/api/net/interest/X.default.X1.default").status_code == 404
    response = client.delete("/api/net/interest/X.default.X1.default")
    assert response.status_code == 200
    assert root.clusters.by_id("c1")["interests"] == []


def test_table_query_needs_a_registered_cluster(client, stranger):
    _deploy_example(client)
    response = stranger.get("/api/net/service/X_default_X1_default/instances")
    assert response.status_code == 400
    assert "registered" in response.get_json()["reason"]


def test_subnets_are_distinct_and_follow_the_design(client):
    first = client.get("/api/net/subnet").get_json()
    second = client.get("/api/net/subnet").get_json()
    assert first == {"subnet_addr": "10.16.0.0", "subnet_addr_v6": "fc00::"}
    assert second == {"subnet_addr": "10.16.0.64", "subnet_addr_v6": "fc00::100"}


def test_user_chosen_closest_and_v6_addresses(client):
    payload = service_payload(
        X1_ID,
        "X1",
        addresses={
            "rr_ip_v6": "FDFF:2000:0::30",
            "closest_ip": "10.30.9.9",
            "closest_ip_v6": "fdff:1000::9",
        },
    )
    body = client.post("/api/net/service/deploy", json=payload).get_json()
    rr, closest = body["service_ip_list"]
    assert rr["Address_v6"] == "fdff:2000::30"
    assert closest == {"IpType": "Closest", "Address": "10.30.9.9", "Address_v6": "fdff:1000::9"}


def test_a_null_location_clears_where_an_instance_runs(client, root):
    _deploy_example(client)
    located = {
        "instance_number": 0,
        "namespace_ip": "10.16.0.2",
        "namespace_ip_v6": "fc00::2",
        "host_ip": "198.18.0.11",
        "host_port": 50103,
    }
    cleared = {
        "instance_number": 0,
        "namespace_ip": None,
        "namespace_ip_v6": None,
        "host_ip": None,
        "host_port": None,
    }
    for report in (located, cleared):
        response = client.post(
            "/api/net/service/net_deploy_status", json={"job_id": X1_ID, "instances": [report]}
        )
        assert response.status_code == 200, response.get_json()
    instance = root.services.find_by_name("X.default.X1.default")["instance_list"][0]
    assert [instance[f] for f in ("namespace_ip", "host_ip", "host_port")] == [None] * 3
