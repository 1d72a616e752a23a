"""What the cluster publishes: table answers are the same bytes, encoded once per job."""

from __future__ import annotations

import json

from test_jobs import ROOT_JOB

from cluster_service_manager import jobs
from cluster_service_manager.replies import Replies, TableAnswers


def test_a_remembered_table_answer_is_the_answer_encoded_afresh():
    job = jobs.from_root(ROOT_JOB)
    other = jobs.from_root({**ROOT_JOB, "instance_list": ROOT_JOB["instance_list"][:1]})
    tables = TableAnswers(size=1)
    keys = ["X.default.X3.default", "10.30.1.30", 'odd "key" \\ é', "fdff:2000::1"]
    for key in keys:
        for candidate in (job, other, job):  # the size of 1 forgets one for the other
            assert tables.answer(candidate, key) == candidate.table_result(key).to_json()


def test_replies_publish_the_table_result_of_the_job_or_of_no_job():
    sent: list[tuple[str, str]] = []
    replies = Replies(lambda topic, payload: sent.append((topic, payload)))
    job = jobs.from_root(ROOT_JOB)
    replies.table("n1", job, "10.30.1.30")
    replies.table("n1", job, "10.30.1.30")
    replies.table("n2", None, "unknown.default.x.default")
    assert [topic for topic, _ in sent] == ["nodes/n1/net/tablequery/result"] * 2 + [
        "nodes/n2/net/tablequery/result"
    ]
    assert sent[0][1] == sent[1][1] == job.table_result("10.30.1.30").to_json()
    unknown = json.loads(sent[2][1])
    assert unknown == {
        "app_name": None,
        "query_key": "unknown.default.x.default",
        "instance_list": [],
    }
