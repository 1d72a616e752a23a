"""HTTP error type of the service's domain answers (404, 409, 503 …).

Views and services raise `ApiError`; the app turns it (and every werkzeug HTTP error)
into a JSON body `{"error": <short name>, "reason": <what to fix>}` with the right
status. Bad input is `oakestra_net.validation.InvalidInput`, raised by the request
models of `schemas`, and answered 400 with the field named.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
