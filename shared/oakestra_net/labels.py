"""Bounded metric label values: a label fed from request data gets a fixed set of values.

Every distinct label value is a new time series kept for the life of the process, so a
client sending 2,000 made-up HTTP methods must not create 2,000 series.
"""

from __future__ import annotations

from collections.abc import Collection

OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def bounded(value: object, allowed: Collection[str], other: str = OTHER) -> str:
    """`value` if it is one of `allowed`, else `other`."""
    return value if isinstance(value, str) and value in allowed else other


def http_method(method: object) -> str:
    return bounded(method, HTTP_METHODS)


def http_status(status: int) -> str:
    """The status code as text; codes outside 100-599 read as "other"."""
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else OTHER
