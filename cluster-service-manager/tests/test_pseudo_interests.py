"""Interest removals naming a service IP (upstream nodes' pseudo-interests) never reach the root.

An upstream net manager records the service IP it queried as an interest of its own and,
10 s later, sends `interest/remove {"appname": "10.30.1.30"}`. An IPv4 address is also
four dot-separated parts of digits, so it must be recognised as an address before the
job-name check, or the cluster would call `DELETE /api/net/interest/10_30_1_30`.
"""

from __future__ import annotations

import logging
import threading

import pytest
from csm_helpers import X3, X3_ID

from testsupport import wait_until

pytestmark = pytest.mark.usefixtures("fail_on_log_exception")

NODE_A = "6630a0a0a0a0a0a0a0a0a0a0"


class RootCalls:
    """WSGI middleware: records (method, path) of every request the root receives."""

    def __init__(self, app) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            self.calls.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        return self.app(environ, start_response)

    def interest_removals(self) -> list[str]:
        with self._lock:
            calls = list(self.calls)
        return [p for m, p in calls if m == "DELETE" and p.startswith("/api/net/interest/")]


@pytest.fixture
def root_calls(root_server) -> RootCalls:
    recorder = RootCalls(root_server.server.app)
    root_server.server.stop()
    root_server.server.app = recorder
    root_server.server.start()
    return recorder


def messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.get_records("call") if r.levelno == level]


def test_service_ip_interest_removals_make_no_root_call(
    root_calls, root_server, cluster, make_node, caplog
):
    root_server.deploy_service(X3_ID, "X3", "10.30.1.30")
    rr_v6 = root_server.state.services.find_by_name(X3)["service_ip_list"][0]["Address_v6"]
    a = make_node(NODE_A)
    assert a.query(sip="10.30.1.30")["app_name"] == X3
    caplog.set_level(logging.INFO)

    for service_ip in ("10.30.1.30", rr_v6, "10.30.77.77"):  # known and unknown addresses
        a.remove_interest(service_ip)
    # then the real one: the node leaves X3, nobody here needs it, the root interest goes.
    # The node's messages are handled in order, so the calls above were decided before.
    a.remove_interest(X3)
    wait_until(lambda: root_calls.interest_removals())
    cluster.idle()

    assert root_calls.interest_removals() == ["/api/net/interest/X_default_X3_default"]
    ignored = messages(caplog, logging.INFO).count("interest removal for a service IP ignored")
    assert ignored == 3
    assert "root interest removed" in messages(caplog, logging.INFO)
    assert not [m for m in messages(caplog, logging.WARNING) if "interest" in m]
    assert cluster.job(X3) is None and root_server.interests() == []


def test_a_service_ip_removal_keeps_the_nodes_job_interest(
    root_calls, root_server, cluster, make_node
):
    root_server.deploy_service(X3_ID, "X3", "10.30.1.30")
    a = make_node(NODE_A)
    a.query(sip="10.30.1.30")
    a.remove_interest("10.30.1.30")
    a.query(sname=X3)  # a barrier: answered after the removal was handled
    cluster.idle()
    assert cluster.interested(X3) == [NODE_A]
    assert root_server.interests() == [X3]
    assert root_calls.interest_removals() == []
