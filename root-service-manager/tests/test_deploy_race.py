"""Two deploys of the same service at once: both callers see the same complete answer."""

from __future__ import annotations

import threading

import pytest
from rsm_payloads import X1_ID, service_payload

from testsupport import wait_until

pytestmark = pytest.mark.process


class ClaimWatcher:
    """Wraps the jobs collection; records when a reader saw a job still allocating."""

    def __init__(self, jobs) -> None:
        self._jobs = jobs
        self.saw_allocating = threading.Event()

    def find_one(self, *args, **kwargs):
        doc = self._jobs.find_one(*args, **kwargs)
        if doc is not None and doc.get("state") == "allocating":
            self.saw_allocating.set()
        return doc

    def __getattr__(self, name):
        return getattr(self._jobs, name)


def test_a_deploy_racing_an_allocation_answers_the_complete_addresses(app, root, db):
    services = root.services
    reserve_all = services.allocator.reserve_all
    first_reserving = threading.Event()
    let_first_finish = threading.Event()

    def slow_reserve_all(wanted):
        first_reserving.set()
        assert let_first_finish.wait(10), "the test never let the first allocation finish"
        return reserve_all(wanted)

    services.allocator.reserve_all = slow_reserve_all
    watcher = ClaimWatcher(services.jobs)
    services.jobs = watcher
    answers: dict[str, object] = {}

    def deploy(name: str) -> None:
        response = app.test_client().post(
            "/api/net/service/deploy", json=service_payload(X1_ID, "X1")
        )
        answers[name] = (response.status_code, response.get_json())

    first = threading.Thread(target=deploy, args=("first",))
    first.start()
    assert first_reserving.wait(10), "the first deploy never started allocating"
    second = threading.Thread(target=deploy, args=("second",))
    second.start()
    wait_until(watcher.saw_allocating.is_set, timeout=10, message="second never saw the claim")
    let_first_finish.set()
    first.join(10)
    second.join(10)

    status_1, body_1 = answers["first"]
    status_2, body_2 = answers["second"]
    assert status_1 == status_2 == 200, (body_1, body_2)
    ips_1, ips_2 = body_1["service_ip_list"], body_2["service_ip_list"]
    assert ips_1 == ips_2
    assert [entry["IpType"] for entry in ips_1] == ["RR", "Closest"]
    assert all(entry["Address"] and entry["Address_v6"] for entry in ips_1)
    # one v4 + one v6 per kind reserved, nothing else
    assert db["ip_reservations"].count_documents({}) == 4
