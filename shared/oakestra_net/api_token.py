"""The bearer token that guards the HTTP APIs of the root and cluster service managers.

One secret, `NET_API_TOKEN`, is shared by the trusted control plane: the orchestrator
(Oakestra's system and cluster managers), the root and every cluster service manager.
When it is set, every request under `/api/net/` must carry `Authorization: Bearer
<token>`: a missing header is answered 401, a wrong token 403, both as JSON naming the
header; operational routes (`/healthz`, `/metrics`, docs) and the JWT-guarded public
netinfo API are not touched. When it is not set, the APIs stay open as in Oakestra and
`install_guard` says so loudly at start. Callers add `auth_header(token)` to their
requests. Which extra checks an open API makes (the root refuses moving a registered
cluster to another address) is the views' business.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import Any

from oakestra_net.log import get_logger

log = get_logger(__name__)

ENV_VAR = "NET_API_TOKEN"
GUARDED_PREFIX = "/api/net/"
MIN_LENGTH = 16
_EXTENSION = "oakestra_api_token"


class TokenError(ValueError):
    """A configured token that cannot be used; the message names the variable."""


def token_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """The configured token (surrounding blanks removed), None when unset or empty."""
    text = env.get(ENV_VAR, "").strip()
    if not text:
        return None
    check_token(text)
    return text


def parse_token(text: str) -> str:
    """A settings-table parser: the token, or ValueError saying what is wrong (not naming
    the variable, and never repeating the value: it is a secret)."""
    token = text.strip()
    if len(token) < MIN_LENGTH:
        raise ValueError(f"must be at least {MIN_LENGTH} characters long")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("must be printable ASCII without spaces")
    return token


def check_token(token: str) -> None:
    """Raise TokenError (naming the variable) unless `token` is usable."""
    try:
        parse_token(token)
    except ValueError as err:
        raise TokenError(f"{ENV_VAR} {err}") from None


def auth_header(token: str | None) -> dict[str, str]:
    """The header a caller sends (empty when no token is configured)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def install_guard(app: Any, token: str | None, *, component: str) -> None:
    """Require the token on `/api/net/` of the Flask `app`, or warn loudly that it is open."""
    from flask import request  # Flask is the services' dependency, not the package's

    if token is not None:
        check_token(token)
    app.extensions[_EXTENSION] = token
    if token is None:
        log.warning(
            f"API OPEN: {ENV_VAR} is not set, so anyone who reaches this port may call "
            f"its write endpoints; set {ENV_VAR} here and in every caller",
            component=component,
        )
        return
    log.info("API guarded by a bearer token", component=component, variable=ENV_VAR)
    expected = token.encode()

    @app.before_request
    def _require_token():
        rule = request.url_rule.rule if request.url_rule is not None else ""
        if not (request.path.startswith(GUARDED_PREFIX) or rule.startswith(GUARDED_PREFIX)):
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _refuse(401, "missing header 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), expected):
            return _refuse(403, "header 'Authorization': the bearer token is not valid")
        return None


def guarded() -> bool:
    """Whether the current app requires the token (so a request that got here carries it)."""
    from flask import current_app

    return current_app.extensions.get(_EXTENSION) is not None


def _refuse(status: int, reason: str) -> Any:
    from flask import jsonify, request

    log.warning(
        "API call refused",
        status=status,
        method=request.method,
        path=request.path[:200],
        caller=request.remote_addr,
        reason=reason,
    )
    name = "Unauthorized" if status == 401 else "Forbidden"
    response = jsonify({"error": name, "reason": reason})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="oakestra-net"'
    return response
