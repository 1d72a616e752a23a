"""HTTP client of the root service manager: the calls of reference §2.2, bounded in time.

Every call has a timeout. A call is retried with exponential backoff when no answer
came (connection refused, timeout) or the root answered 502/503/504, except that a
call which is not idempotent (a subnet allocation) is retried only when the request
surely never reached the root (connection refused). What is left after the retries
becomes one of three exceptions: `RootUnavailable` (try again later), `NotFound`
(the root does not know the job), `RootRejected` (the root refused the request or
answered something unusable; retrying cannot help). Deciding when to try again later
is the caller's business.

Calls go out on one kept-alive connection per thread (`root_http`, cheaper per call
than requests); requests remains for what that transport leaves out: a proxy from the
environment, a client certificate, credentials in the URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from oakestra_net.log import get_logger
from oakestra_net.names import encode_path

from .root_http import Answer, NoAnswer, RootHttp, basic_auth

log = get_logger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
# requests' session defaults; the thin transport sends its own Accept and no
# Accept-Encoding (it does not decompress), User-Agent and Connection from http.client
_REQUESTS_DEFAULTS = frozenset({"user-agent", "accept-encoding", "accept", "connection"})


class RootError(Exception):
    """A root call that did not succeed; the message names the call."""


class RootUnavailable(RootError):
    """No usable answer from the root (down, slow, overloaded); retrying later may work."""


class NotFound(RootError):
    """The root does not know the requested job or service IP."""


class RootRejected(RootError):
    """The root refused the request (4xx) or answered something that is not usable."""


class _NoAnswer(Exception):
    def __init__(self, reason: str, *, maybe_sent: bool) -> None:
        super().__init__(reason)
        self.maybe_sent = maybe_sent


class RootClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        on_call: Callable[[str, str], None] | None = None,
        on_unknown_cluster: Callable[[], None] | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"root client attempts must be >= 1, got {attempts}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        self._on_call = on_call or (lambda _call, _outcome: None)
        self.on_unknown_cluster = on_unknown_cluster or (lambda: None)
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=32))
        self.session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=32))
        self._read_environment_once()
        self._http: RootHttp | None = None
        if RootHttp.usable_for(
            self.base_url, self.session.proxies, self.session.cert, self.session.auth
        ):
            try:
                self._http = RootHttp(self.base_url, timeout=timeout, verify=self.session.verify)
            except OSError as err:  # an unreadable CA bundle: requests says so on every call
                log.warning("root calls through requests", reason=f"CA bundle: {err}"[:200])

    def _read_environment_once(self) -> None:
        """Proxy variables, CA bundle and .netrc for the root's URL, read now, not per call.

        requests reads them on every request (a sixth of a call's CPU); the URL is fixed
        and the environment does not change while the process runs.
        """
        found = self.session.merge_environment_settings(self.base_url, {}, None, None, None)
        auth = requests.utils.get_netrc_auth(self.base_url)
        self.session.trust_env = False
        self.session.proxies.update(found.get("proxies") or {})
        if found.get("verify") not in (None, True):
            self.session.verify = found["verify"]
        if auth:
            self.session.auth = auth

    # -- the calls ------------------------------------------------------------

    def job_by_name(self, job_name: str) -> dict:
        """Table query by job name; the root also records this cluster's interest."""
        path = f"/api/net/service/{encode_path(job_name)}/instances"
        return self._job(self._call("table query by name", "GET", path), f"job {job_name}")

    def job_by_ip(self, service_ip: str) -> dict:
        """Table query by a service IP (RR, Closest or instance IP, v4 or v6)."""
        path = f"/api/net/service/ip/{encode_path(service_ip)}/instances"
        return self._job(self._call("table query by IP", "GET", path), f"service IP {service_ip}")

    def new_subnet(self) -> tuple[str, str]:
        """A fresh node subnet: (IPv4 network address, IPv6 network address)."""
        body = self._call("subnet", "GET", "/api/net/subnet", idempotent=False)
        if not isinstance(body, dict):
            raise RootRejected(f"root subnet answer is not a JSON object: {body!r:.100}")
        v4, v6 = body.get("subnet_addr"), body.get("subnet_addr_v6")
        if not (isinstance(v4, str) and v4 and isinstance(v6, str) and v6):
            raise RootRejected(f"root subnet answer lacks subnet_addr/subnet_addr_v6: {body!r}")
        return v4, v6

    def release_subnet(self, subnet_v4: str | None, subnet_v6: str | None) -> None:
        body = {"subnet_addr": subnet_v4, "subnet_addr_v6": subnet_v6}
        self._call("subnet release", "DELETE", "/api/net/subnet", json=body)

    def report_locations(self, job_id: str, instances: list[dict]) -> None:
        """`net_deploy_status`: where instances of a job run now."""
        body = {"job_id": job_id, "instances": instances}
        self._call("deploy status", "POST", "/api/net/service/net_deploy_status", json=body)

    def remove_interest(self, job_name: str) -> None:
        self._call("interest removal", "DELETE", f"/api/net/interest/{encode_path(job_name)}")

    def register_cluster(self, cluster_id: str, address: str, port: int) -> None:
        body = {"cluster_id": cluster_id, "cluster_address": address, "cluster_port": port}
        self._call("cluster registration", "POST", "/api/net/cluster", json=body)

    def root_state(self, *, brief: bool = False) -> dict:
        """Ours: the root's store generation and whether it is rebuilding (NotFound: upstream).

        `brief`: without the lists of our interests and subnets (a root before `brief`
        sends them anyway)."""
        path = "/api/net/state?brief=1" if brief else "/api/net/state"
        body = self._call("root state", "GET", path)
        if not isinstance(body, dict) or not isinstance(body.get("generation"), str):
            raise RootRejected(f"root state answer lacks a generation: {body!r:.100}")
        return body

    def push_state(self, state: dict) -> dict:
        """Ours: tell a root with a new store which addresses this cluster knows in use."""
        body = self._call("state push", "POST", "/api/net/cluster/state", json=state)
        return body if isinstance(body, dict) else {}

    # -- plumbing -------------------------------------------------------------

    def _call(
        self, call: str, method: str, path: str, *, idempotent: bool = True, json: Any = None
    ) -> Any:
        url = f"{self.base_url}{path}"
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._send(method, url, json)
            except _NoAnswer as err:
                if attempt == self.attempts or (err.maybe_sent and not idempotent):
                    self._on_call(call, "unavailable")
                    raise RootUnavailable(f"root {call} {method} {url}: {err}") from None
            else:
                return self._answer(call, method, url, response)
            self._sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, body: Any) -> requests.Response | Answer:
        """One request; `_NoAnswer` when it failed in a way that a retry may fix."""
        if self._http is not None:
            response: requests.Response | Answer = self._send_thin(method, url, body)
        else:
            response = self._send_requests(method, url, body)
        if response.status_code in RETRY_STATUSES:
            raise _NoAnswer(f"HTTP {response.status_code}", maybe_sent=True)
        return response

    def _send_thin(self, method: str, url: str, body: Any) -> Answer:
        assert self._http is not None
        try:
            return self._http.send(method, url[len(self.base_url) :], self._headers(), body)
        except NoAnswer as err:
            raise _NoAnswer(str(err), maybe_sent=not err.never_sent) from None

    def _headers(self) -> dict[str, str]:
        """The session's headers (the API token among them) without requests' own
        defaults, read per call: the app sets them after construction."""
        headers = {
            name: value
            for name, value in self.session.headers.items()
            if name.lower() not in _REQUESTS_DEFAULTS and isinstance(value, str)
        }
        headers["Accept"] = "application/json"
        if isinstance(self.session.auth, tuple):
            headers["Authorization"] = basic_auth(self.session.auth)
        return headers

    def _send_requests(self, method: str, url: str, body: Any) -> requests.Response:
        """The requests path, for what the thin transport leaves out (a proxy, a client
        certificate, credentials in the URL)."""
        try:
            response = self._request(method, url, body)
        except (requests.ConnectTimeout, requests.ConnectionError) as err:
            never_sent = isinstance(err, requests.ConnectTimeout) or _refused(err)
            raise _NoAnswer(_reason(err), maybe_sent=not never_sent) from None
        except requests.RequestException as err:  # read timeouts and the like
            raise _NoAnswer(_reason(err), maybe_sent=True) from None
        return response

    def _request(self, method: str, url: str, body: Any) -> requests.Response:
        """`session.request` without its per-call merging of settings and environment
        (a third of a forwarded table query's CPU in the cluster): headers, auth,
        proxies and CA bundle are the session's, fixed at construction. The root's API
        answers without redirects and cookies, which the session alone would follow
        and keep."""
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=method, url=url, headers=self.session.headers, json=body, auth=self.session.auth
        )
        return self.session.get_adapter(url).send(
            prepared,
            timeout=self.timeout,
            proxies=self.session.proxies,
            verify=self.session.verify,
            cert=self.session.cert,
        )

    def _answer(
        self, call: str, method: str, url: str, response: requests.Response | Answer
    ) -> Any:
        status = response.status_code
        if status in (400, 404) and _unknown_cluster(response):
            self.on_unknown_cluster()  # the root lost us: register again (see root_watch)
        if status == 404:
            self._on_call(call, "not_found")
            raise NotFound(f"root {call} {method} {url}: 404 {_text(response)}")
        if status >= 300:
            self._on_call(call, "rejected")
            raise RootRejected(f"root {call} {method} {url}: HTTP {status} {_text(response)}")
        self._on_call(call, "ok")
        try:
            return response.json()
        except ValueError:
            return None  # not JSON: unusable where an answer is needed

    @staticmethod
    def _job(body: Any, what: str) -> dict:
        if body == {}:  # upstream roots answer 200 {} for an unknown job
            raise NotFound(f"root does not know {what}")
        if not isinstance(body, dict):
            raise RootRejected(f"root answer for {what} is not a JSON object")
        return body

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self.session.close()


def _refused(err: requests.ConnectionError) -> bool:
    """Whether the request surely never reached the root (nothing listened)."""
    text = str(err)
    return "Connection refused" in text or "Errno 111" in text


def _unknown_cluster(response: requests.Response | Answer) -> bool:
    """Whether the root refused because it does not know this cluster."""
    text = _text(response).lower()
    return "not registered" in text or "is the cluster registered" in text


def _reason(err: Exception) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text[:200]}"


def _text(response: requests.Response | Answer) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "reason" in body:
        return str(body["reason"])[:200]
    return str(body)[:200]
