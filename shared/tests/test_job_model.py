"""Typed jobs: the root's document in, the same document and the wire answer out."""

from __future__ import annotations

import pytest

from oakestra_net.job_model import Instance, InvalidJob, Job, JobServiceIp
from oakestra_net.services import CLOSEST, ROUND_ROBIN

ROOT_ANSWER = {
    "_id": "6630f0f0f0f0f0f0f0f0f001",
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
            "host_ip": "192.0.2.1",
            "host_port": "50103",
        }
    ],
}


def test_a_root_answer_reads_as_a_typed_job_and_writes_back_in_store_form():
    job = Job.from_root_answer(ROOT_ANSWER)
    assert [e.kind for e in job.service_ips] == [ROUND_ROBIN, CLOSEST]
    assert job.instances[0].host_port == 50103 and job.instances[0].is_located
    doc = job.to_document()
    assert doc["job_id"] == ROOT_ANSWER["_id"]
    assert doc["service_ip_list"] == ROOT_ANSWER["service_ip_list"]
    assert Job.from_document(doc) == job


def test_the_wire_answer_lists_job_ips_then_the_instance_ip():
    (entry,) = (
        Job.from_root_answer(ROOT_ANSWER).table_result("10.30.0.1").to_dict()["instance_list"]
    )
    assert [(e["IpType"], e["Address"]) for e in entry["service_ip"]] == [
        ("RR", "10.30.0.1"),
        ("Closest", "10.30.0.2"),
        ("instance_ip", "10.30.0.3"),
    ]


def test_node_fields_appear_in_the_document_only_when_known():
    assert "worker_id" not in Instance(0).to_document()
    assert Instance(0, worker_id="n1").to_document()["worker_id"] == "n1"


def test_an_entry_of_another_kind_is_refused():
    assert JobServiceIp(ROUND_ROBIN, "10.30.0.1", None).to_document()["IpType"] == "RR"
    bad = {**ROOT_ANSWER, "service_ip_list": [{"IpType": "instance_ip"}]}
    with pytest.raises(InvalidJob, match="service_ip_list"):
        Job.from_root_answer(bad)
