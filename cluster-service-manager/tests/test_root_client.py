"""The root client against a scripted HTTP server: paths, timeouts, retries, exceptions."""

from __future__ import annotations

import json
import threading
import time

import pytest
from csm_helpers import LiveServer

from cluster_service_manager.root_client import NotFound, RootClient, RootRejected, RootUnavailable
from testsupport import free_port, wait_until

pytestmark = pytest.mark.process  # real broker / server / subprocess


class ScriptedRoot:
    """A WSGI app answering from a script of (status, body, delay) and recording requests."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, float]] = []
        self.requests: list[tuple[str, str, object]] = []
        self._lock = threading.Lock()

    def answer(self, *answers: tuple) -> None:
        self.script.extend((*a, 0.0)[:3] for a in answers)

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        with self._lock:
            body = json.loads(raw) if raw else None
            self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], body))
            status, answer, delay = self.script.pop(0) if self.script else (200, {}, 0.0)
        time.sleep(delay)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(f"{status} X", headers)
        return [data]


@pytest.fixture
def scripted():
    root = ScriptedRoot()
    server = LiveServer(root).start()
    yield root, server.url
    server.stop()


def client(url: str, **options) -> RootClient:
    sleeps: list[float] = []
    options = {"timeout": 0.5, "attempts": 3, "backoff": 0.01, "sleep": sleeps.append, **options}
    made = RootClient(url, **options)
    made.sleeps = sleeps  # type: ignore[attr-defined]
    return made


JOB = {"_id": "a" * 24, "job_name": "X.default.X3.default", "instance_list": []}


def test_table_queries_encode_the_path(scripted):
    root, url = scripted
    root.answer((200, JOB), (200, JOB), (200, JOB))
    rc = client(url)
    assert rc.job_by_name("X.default.X3.default") == JOB
    assert rc.job_by_ip("10.30.1.30") == JOB
    assert rc.job_by_ip("fdff:2000::1") == JOB
    assert [path for _m, path, _b in root.requests] == [
        "/api/net/service/X_default_X3_default/instances",
        "/api/net/service/ip/10_30_1_30/instances",
        "/api/net/service/ip/fdff:2000::1/instances",
    ]


def test_unknown_jobs_are_not_found(scripted):
    root, url = scripted
    root.answer((404, {"error": "Not Found", "reason": "no service"}), (200, {}))
    rc = client(url)
    with pytest.raises(NotFound, match="no service"):
        rc.job_by_name("X.default.X3.default")
    with pytest.raises(NotFound):  # what upstream roots answer
        rc.job_by_name("X.default.X3.default")


def test_refusals_are_final(scripted):
    root, url = scripted
    root.answer((400, {"reason": "Invalid cluster address, is the cluster registered?"}))
    rc = client(url)
    with pytest.raises(RootRejected, match="is the cluster registered"):
        rc.job_by_name("X.default.X3.default")
    assert len(root.requests) == 1


def test_answers_that_are_not_json_objects_are_refusals(scripted):
    root, url = scripted
    root.answer((200, b"<html>proxy</html>"), (200, [1]), (200, b"oops"))
    rc = client(url)
    with pytest.raises(RootRejected, match="not a JSON object"):
        rc.job_by_name("X.default.X3.default")
    with pytest.raises(RootRejected, match="not a JSON object"):
        rc.job_by_ip("10.30.1.30")
    with pytest.raises(RootRejected, match="not a JSON object"):
        rc.new_subnet()


def test_overload_is_retried_with_backoff(scripted):
    root, url = scripted
    root.answer((503, {}), (502, {}), (200, JOB))
    rc = client(url)
    assert rc.job_by_name("X.default.X3.default") == JOB
    assert len(root.requests) == 3
    assert rc.sleeps == [0.01, 0.02]


def test_persistent_overload_is_unavailable(scripted):
    root, url = scripted
    root.answer((503, {}), (503, {}), (503, {}))
    with pytest.raises(RootUnavailable, match="HTTP 503"):
        client(url).job_by_name("X.default.X3.default")
    assert len(root.requests) == 3


def test_a_subnet_is_not_requested_twice_after_a_maybe(scripted):
    root, url = scripted
    root.answer((503, {}))
    with pytest.raises(RootUnavailable):
        client(url).new_subnet()
    assert len(root.requests) == 1
    root.answer((200, {"subnet_addr": "10.16.0.0", "subnet_addr_v6": "fc00::"}))
    assert client(url).new_subnet() == ("10.16.0.0", "fc00::")
    root.answer((200, {"subnet_addr": "10.16.0.0"}))
    with pytest.raises(RootRejected, match="subnet_addr_v6"):
        client(url).new_subnet()


def test_timeouts(scripted):
    root, url = scripted
    root.answer((200, JOB, 1.0), (200, JOB, 1.0))
    rc = client(url, timeout=0.2, attempts=2)
    started = time.monotonic()
    with pytest.raises(RootUnavailable, match="Timeout"):
        rc.job_by_name("X.default.X3.default")
    assert time.monotonic() - started < 1.5
    assert len(root.requests) == 2
    root.answer((200, JOB, 1.0))
    with pytest.raises(RootUnavailable):
        rc.new_subnet()  # not idempotent: one try only
    assert len(root.requests) == 3


def test_nothing_listening_is_unavailable_and_retried():
    rc = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RootUnavailable, match="root subnet GET"):
        rc.new_subnet()  # the request surely never arrived: retrying is safe
    assert len(rc.sleeps) == 2


def test_reports_and_interest_removal(scripted):
    root, url = scripted
    rc = client(url)
    instances = [{"instance_number": 0, "namespace_ip": "10.16.0.2"}]
    rc.report_locations("a" * 24, instances)
    rc.remove_interest("X.default.X3.default")
    rc.release_subnet("10.16.0.0", "fc00::")
    rc.register_cluster("c1", "192.0.2.10", 10110)
    assert root.requests == [
        (
            "POST",
            "/api/net/service/net_deploy_status",
            {"job_id": "a" * 24, "instances": instances},
        ),
        ("DELETE", "/api/net/interest/X_default_X3_default", None),
        ("DELETE", "/api/net/subnet", {"subnet_addr": "10.16.0.0", "subnet_addr_v6": "fc00::"}),
        (
            "POST",
            "/api/net/cluster",
            {"cluster_id": "c1", "cluster_address": "192.0.2.10", "cluster_port": 10110},
        ),
    ]


def test_attempts_must_be_positive():
    with pytest.raises(ValueError, match="attempts"):
        RootClient("http://x", attempts=0)


def test_a_root_that_forgot_this_cluster_triggers_a_new_registration(scripted):
    root, url = scripted
    forgotten: list[bool] = []
    made = client(url, on_unknown_cluster=lambda: forgotten.append(True))
    root.answer(
        (
            400,
            {
                "error": "Bad Request",
                "reason": "Invalid cluster address, is the cluster registered?",
            },
        )
    )
    with pytest.raises(RootRejected):
        made.job_by_name("X.default.X3.default")
    assert forgotten == [True]
    root.answer((404, {"error": "Not Found", "reason": "no job X.default.X9.default"}))
    with pytest.raises(NotFound):
        made.job_by_name("X.default.X9.default")
    assert forgotten == [True], "an unknown job is not an unknown cluster"


def test_root_state_and_push(scripted):
    root, url = scripted
    made = client(url)
    root.answer((200, {"generation": "g1", "rebuilding": True}))
    assert made.root_state()["generation"] == "g1"
    root.answer((200, {"message": "state restored", "reserved": 2, "conflicts": []}))
    assert made.push_state({"jobs": [], "subnets": []})["reserved"] == 2
    assert root.requests[-1] == ("POST", "/api/net/cluster/state", {"jobs": [], "subnets": []})
    root.answer((404, {"error": "Not Found"}))
    with pytest.raises(NotFound):  # an upstream root: the watch then asks rarely
        made.root_state()


def test_a_proxy_from_the_environment_is_still_used(scripted, monkeypatch):
    """The environment is read once, at construction, and still decides the route."""
    root, proxy_url = scripted
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    root.answer((200, JOB))
    rc = client(f"http://127.0.0.1:{free_port()}")  # nothing listens there: only the proxy
    monkeypatch.delenv("HTTP_PROXY")
    assert rc.job_by_name("X.default.X3.default") == JOB
    assert [path for _m, path, _b in root.requests][0].endswith(
        "/api/net/service/X_default_X3_default/instances"
    )


def test_concurrent_queries_for_one_new_job_ask_the_root_once(scripted, db):
    """Nodes asking for one uncached job at once: the first fetches, the rest find it cached."""
    from cluster_service_manager.cache import JobCache
    from cluster_service_manager.directory import Directory

    root, url = scripted
    job = {
        **JOB,
        "service_ip_list": [{"IpType": "RR", "Address": "10.30.1.30", "Address_v6": "fdff::1"}],
    }
    root.answer((200, job, 0.3), (200, job), (200, job), (200, job))
    cache = JobCache(db)
    cache.ensure_indexes()
    directory = Directory(cache, client(url, timeout=5))
    answers: list = []
    threads = [
        threading.Thread(target=lambda: answers.append(directory.resolve(job_name=JOB["job_name"])))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [a.job_name for a in answers] == [JOB["job_name"]] * 4
    assert len(root.requests) == 1


class KeepAliveRoot:
    """ScriptedRoot behind an HTTP/1.1 server that keeps connections open as gunicorn does
    (werkzeug's closes each one); counts the connections it accepted."""

    def __init__(self, root: ScriptedRoot, port: int | None = None) -> None:
        import http.server

        self.root = root
        self.connections = 0
        self.sockets: list = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                owner.connections += 1
                owner.sockets.append(self.request)
                super().setup()

            def _serve(self):
                path, _, _query = self.path.partition("?")
                environ = {
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "CONTENT_LENGTH": self.headers.get("Content-Length", ""),
                    "wsgi.input": self.rfile,
                }
                answer: list = []
                chunks = owner.root(environ, lambda status, head: answer.extend([status, head]))
                self.send_response(int(answer[0].split()[0]))
                for name, value in answer[1]:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(b"".join(chunks))

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Stop listening and close every connection, kept-alive ones included."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        for sock in self.sockets:
            try:
                sock.shutdown(2)
            except OSError:
                pass


def test_calls_share_one_kept_alive_connection_per_thread():
    root = ScriptedRoot()
    server = KeepAliveRoot(root)
    try:
        root.answer((200, JOB), (200, JOB), (200, JOB), (200, JOB))
        rc = client(server.url)
        for _ in range(3):
            assert rc.job_by_name("X.default.X3.default") == JOB
        assert server.connections == 1
        other = threading.Thread(target=lambda: rc.job_by_name("X.default.X3.default"))
        other.start()
        other.join(5)
        assert server.connections == 2  # another thread, its own connection
        rc.close()
    finally:
        server.stop()


def test_a_connection_the_root_closed_while_idle_is_replaced():
    """gunicorn closes kept-alive connections after 5 idle seconds: the next call opens a
    new one instead of failing (for a subnet: instead of giving up on a maybe-sent call)."""
    root = ScriptedRoot()
    server = KeepAliveRoot(root)
    rc = client(server.url)
    try:
        root.answer((200, JOB))
        rc.job_by_name("X.default.X3.default")
        server.stop()  # closes the kept-alive connection on the root's side
        stale = rc._http._local.conn  # type: ignore[union-attr]
        server = KeepAliveRoot(root, port=server.port)
        root.answer((200, {"subnet_addr": "10.16.0.0", "subnet_addr_v6": "fc00::"}))
        wait_until(lambda: _closed(stale.sock), message="the old connection closed by the root")
        assert rc.new_subnet() == ("10.16.0.0", "fc00::")
        assert rc.sleeps == []  # no retry: the stale connection was not used
        assert server.connections == 1
    finally:
        server.stop()


def test_a_connection_idle_for_longer_than_two_seconds_is_not_reused():
    """The root may be closing it just as the request goes out; for a POST that would
    be a maybe-sent call, never retried."""
    root = ScriptedRoot()
    server = KeepAliveRoot(root)
    rc = client(server.url)
    now = [100.0]
    rc._http._clock = lambda: now[0]  # type: ignore[union-attr]
    try:
        root.answer((200, JOB), (200, JOB), (200, JOB))
        rc.job_by_name("X.default.X3.default")
        now[0] += 2.0
        rc.job_by_name("X.default.X3.default")
        assert server.connections == 1  # idle 2 s: still kept
        first = rc._http._local.conn  # type: ignore[union-attr]
        now[0] += 2.1
        rc.job_by_name("X.default.X3.default")
        assert server.connections == 2 and first.sock is None  # replaced and closed
        assert rc.sleeps == []
    finally:
        rc.close()
        server.stop()


def _closed(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_headers_and_json_body_reach_the_root(scripted):
    root, url = scripted
    seen: list[dict] = []
    original = root.__call__

    def recording(environ, start_response):
        seen.append({k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))})
        return original(environ, start_response)

    server = LiveServer(recording).start()
    try:
        rc = client(server.url)
        rc.session.headers.update({"Authorization": "Bearer t0ken"})  # what the app does
        rc.report_locations("a" * 24, [])
    finally:
        server.stop()
    assert seen[0]["HTTP_AUTHORIZATION"] == "Bearer t0ken"
    assert seen[0]["CONTENT_TYPE"] == "application/json"
    assert "gzip" not in seen[0].get("HTTP_ACCEPT_ENCODING", "")
    assert root.requests[-1] == (
        "POST",
        "/api/net/service/net_deploy_status",
        {"job_id": "a" * 24, "instances": []},
    )


def test_tls_with_the_ca_bundle_from_the_environment(tmp_path, monkeypatch):
    import ssl

    from werkzeug.serving import make_server

    from testsupport.pki import make_pki

    pki = make_pki(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    root = ScriptedRoot()
    port = free_port()
    server = make_server("127.0.0.1", port, root, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        root.answer((200, JOB), (200, JOB))
        untrusted = client(f"https://127.0.0.1:{port}", attempts=1)
        with pytest.raises(RootUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.job_by_name("X.default.X3.default")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki / "ca.crt"))
        trusted = client(f"https://127.0.0.1:{port}")
        assert trusted._http is not None  # type: ignore[attr-defined]
        assert trusted.job_by_name("X.default.X3.default") == JOB
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_proxy_keeps_requests_and_a_direct_route_does_not(monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert client("http://192.0.2.1:10099")._http is None  # type: ignore[attr-defined]
    monkeypatch.setenv("NO_PROXY", "192.0.2.1")
    assert client("http://192.0.2.1:10099")._http is not None  # type: ignore[attr-defined]


def test_a_root_url_the_transport_cannot_parse_fails_per_call_not_at_start():
    rc = client("http://127.0.0.1:notaport", attempts=1)
    assert rc._http is None  # type: ignore[attr-defined]
    with pytest.raises(RootUnavailable, match="root subnet GET"):
        rc.new_subnet()


def test_a_missing_ca_bundle_is_reported_per_call(tmp_path, monkeypatch):
    """As before the transport: the client starts, and each call names the bundle."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.crt"))
    rc = client(f"https://127.0.0.1:{free_port()}", attempts=1)
    with pytest.raises(OSError, match="missing.crt"):
        rc.job_by_name("X.default.X3.default")
