"""The RS256 public key that protects the netinfo API, and token checking.

The key comes from `JWT_PUBLIC_KEY` (PEM text or a file path) or is fetched from
Oakestra's JWT generator (`GET http://<JWT_GENERATOR_URL>:<JWT_GENERATOR_PORT>/key`
→ `{"public_key": …}`) lazily, at most every `retry_interval` seconds, so a
generator that is down never blocks start-up (upstream blocks forever).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import requests

from oakestra_net.log import get_logger

log = get_logger(__name__)


class TokenRejected(Exception):
    pass


class KeyProvider:
    def __init__(
        self,
        *,
        static_key: str | None = None,
        generator_url: str | None = None,
        retry_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = _read_key(static_key) if static_key else None
        self._url = generator_url
        self._retry_interval = retry_interval
        self._clock = clock
        self._next_try = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ = os.environ) -> KeyProvider:
        host = env.get("JWT_GENERATOR_URL", "localhost")
        port = env.get("JWT_GENERATOR_PORT", "10011")
        host = f"[{host}]" if ":" in host else host
        return cls(static_key=env.get("JWT_PUBLIC_KEY"), generator_url=f"http://{host}:{port}/key")

    def key(self) -> str | None:
        if self._key is not None or self._url is None:
            return self._key
        with self._lock:
            if self._key is None and self._clock() >= self._next_try:
                self._next_try = self._clock() + self._retry_interval
                self._key = self._fetch()
        return self._key

    def _fetch(self) -> str | None:
        try:
            response = requests.get(self._url, timeout=2)
            response.raise_for_status()
            key = response.json()["public_key"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as err:
            log.warning("JWT public key not available yet", url=self._url, reason=str(err))
            return None
        log.info("JWT public key fetched", url=self._url)
        return key

    def check(self, authorization: str | None) -> dict[str, Any]:
        """Claims of a valid bearer token; TokenRejected with a reason otherwise."""
        key = self.key()
        if key is None:
            raise LookupError("no JWT public key known yet")
        if not authorization or not authorization.startswith("Bearer "):
            raise TokenRejected("missing 'Authorization: Bearer <token>' header")
        try:
            claims = jwt.decode(authorization[7:].strip(), key, algorithms=["RS256"])
        except jwt.PyJWTError as err:
            raise TokenRejected(f"invalid token: {err}") from None
        if claims.get("file_access_token"):
            raise TokenRejected("file access tokens are not accepted here")
        return claims


def _read_key(value: str) -> str:
    if "BEGIN" in value:
        return value
    with open(value, encoding="utf-8") as handle:
        return handle.read()
