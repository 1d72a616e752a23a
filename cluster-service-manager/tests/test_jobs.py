"""The pure job functions: root answers, merging node reports, table query answers."""

from __future__ import annotations

import dataclasses

import pytest

from cluster_service_manager import jobs
from oakestra_net.messages import TableQueryResult

ROOT_JOB = {
    "_id": "6630f0f0f0f0f0f0f0f0f003",
    "job_name": "X.default.X3.default",
    "service_ip_list": [
        {"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff:2000::1"},
        {"IpType": "Closest", "Address": "10.30.0.1", "Address_v6": "fdff:1000::1"},
    ],
    "instance_list": [
        {
            "instance_number": 0,
            "instance_ip": "10.30.0.2",
            "instance_ip_v6": "fdff::1",
            "cluster_id": "c1",
            "namespace_ip": "10.16.0.66",
            "namespace_ip_v6": "fc00::102",
            "host_ip": "192.0.2.2",
            "host_port": "50103",
        },
        {
            "instance_number": 1,
            "instance_ip": "10.30.0.3",
            "instance_ip_v6": "fdff::2",
            "cluster_id": "c1",
            "namespace_ip": None,
        },
    ],
    "code": "docker.io/x",  # descriptor fields are not cached
}


def cached() -> jobs.Job:
    return jobs.from_root(ROOT_JOB)


def test_from_root_keeps_what_the_cluster_needs():
    job = cached()
    assert set(job.to_document()) == {"job_name", "job_id", "service_ip_list", "instance_list"}
    assert job.job_id == ROOT_JOB["_id"]
    first, second = job.instances
    assert first.host_port == 50103  # upstream roots may store it as a string
    assert second.namespace_ip is None and second.host_port is None


def test_the_store_document_reads_back_as_the_same_job():
    job = jobs.with_location(cached().instances, 1, "nodeA", LOCATION)
    stored = jobs.CachedJob("X.default.X3.default", "id", cached().service_ips, job, ("n1",), 3)
    assert jobs.CachedJob.from_store(stored.to_store()) == stored
    assert stored.to_store()["service_ip_list"] == ROOT_JOB["service_ip_list"]


@pytest.mark.parametrize(
    "broken",
    [
        None,
        [],
        {**ROOT_JOB, "job_name": "X.default.X3"},
        {**ROOT_JOB, "job_name": None},
        {**ROOT_JOB, "_id": None},
        {**ROOT_JOB, "service_ip_list": "RR"},
        {**ROOT_JOB, "service_ip_list": [{"IpType": "Weird"}]},
        {**ROOT_JOB, "instance_list": None},
        {**ROOT_JOB, "instance_list": [{"instance_ip": "10.30.0.2"}]},
        {**ROOT_JOB, "instance_list": [{"instance_number": True}]},
    ],
)
def test_from_root_rejects_unusable_answers(broken):
    with pytest.raises(jobs.InvalidJob):
        jobs.from_root(broken)


@pytest.mark.parametrize("port", ["0", 0, 70000, "80a", -1, True, 3.5])
def test_bad_host_ports_read_as_unknown(port):
    doc = {**ROOT_JOB, "instance_list": [{**ROOT_JOB["instance_list"][0], "host_port": port}]}
    assert jobs.from_root(doc).instances[0].host_port is None


LOCATION = {
    "namespace_ip": "10.16.0.2",
    "namespace_ip_v6": "fc00::2",
    "host_ip": "192.0.2.1",
    "host_port": 50103,
}


def test_merge_keeps_this_clusters_node_reports():
    job = cached()
    reported = jobs.with_location(job.instances, 1, "nodeA", LOCATION)
    fresh = cached().instances  # the root has not heard about instance 1 yet
    merged = jobs.merge_instances(reported, fresh)
    assert merged[1].namespace_ip == "10.16.0.2" and merged[1].worker_id == "nodeA"
    assert merged[0] == fresh[0]


def test_merge_takes_the_root_for_a_new_incarnation_and_drops_gone_instances():
    job = cached()
    reported = jobs.with_location(job.instances, 1, "nodeA", LOCATION)
    moved = dataclasses.replace(cached().instances[1], cluster_id="c2", namespace_ip="10.17.0.2")
    merged = jobs.merge_instances(reported, [moved])
    assert merged == (moved,)


def test_undeployed_clears_the_location_only_if_the_instance_was_on_that_node():
    instances = jobs.with_location(cached().instances, 1, "nodeA", LOCATION)
    assert jobs.without_location(instances, 1, "nodeB") == instances
    cleared = jobs.without_location(instances, 1, "nodeA")[1]
    assert cleared.worker_id is None and cleared.reported_by == "nodeA"
    assert "worker_id" not in cleared.to_document()
    assert all(getattr(cleared, f) is None for f in jobs.LOCATION_FIELDS)
    assert not jobs.runs_here(cleared, None)


def test_address_change_moves_every_instance_of_the_node():
    instances = jobs.with_location(cached().instances, 1, "nodeA", LOCATION)
    instances = jobs.with_location(instances, 0, "nodeB", LOCATION)
    moved = jobs.with_host(instances, "nodeA", 1, "198.51.100.9", 40000)
    assert (moved[1].host_ip, moved[1].host_port) == ("198.51.100.9", 40000)
    assert moved[0] == instances[0]  # on node B: untouched
    assert jobs.changed_numbers(instances, moved) == [1]
    # the named instance of another node stays where it is
    assert jobs.with_host(instances, "nodeA", 0, "198.51.100.9", 1)[0] == instances[0]


def test_without_instance_and_all():
    instances = cached().instances
    assert [i.instance_number for i in jobs.without_instance(instances, 0)] == [1]
    assert jobs.without_instance(instances, -1) == ()
    assert jobs.without_instance(instances, 7) == instances


def test_runs_here_by_node_or_by_cluster_id():
    instance = cached().instances[1]
    assert not jobs.runs_here(instance, None)
    assert jobs.runs_here(instance, "c1")
    assert not jobs.runs_here(instance, "c2")
    assert jobs.runs_here(dataclasses.replace(instance, worker_id="n"), None)


def test_table_result_shape():
    result = jobs.table_result(cached(), "10.30.1.30")
    raw = result.to_dict()
    assert raw["app_name"] == "X.default.X3.default" and raw["query_key"] == "10.30.1.30"
    (instance,) = raw["instance_list"]  # instance 1 has no location yet: left out
    assert instance["host_port"] == 50103
    assert [e["IpType"] for e in instance["service_ip"]] == ["RR", "Closest", "instance_ip"]
    assert instance["service_ip"][2] == {
        "IpType": "instance_ip",
        "Address": "10.30.0.2",
        "Address_v6": "fdff::1",
    }
    assert "worker_id" not in instance
    assert TableQueryResult.from_json(result.to_json()) == result


def test_table_result_leaves_out_instances_nodes_would_reject():
    job = cached()
    first = dataclasses.replace(job.instances[0], cluster_id=None)
    job = dataclasses.replace(job, instances=(first, *job.instances[1:]))
    assert jobs.table_result(job, "k").instance_list == ()


def test_table_result_for_unknown_service_is_empty():
    raw = jobs.table_result(None, "10.30.9.9").to_dict()
    assert raw == {"app_name": None, "query_key": "10.30.9.9", "instance_list": []}


def test_location_report_and_canonical_ip():
    instance = jobs.with_location(cached().instances, 1, "n", LOCATION)[1]
    assert instance.location_report() == {"instance_number": 1, **LOCATION}
    assert instance.is_located
    assert jobs.canonical_ip("fdff:0::0001") == "fdff::1"
    assert jobs.canonical_ip("10.30.1.300") is None
