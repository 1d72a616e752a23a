"""Flask app factory of the root service manager."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify

from oakestra_net import api_token, store
from oakestra_net.http_errors import ApiError, register_json_errors
from oakestra_net.log import get_logger

from .jwt_keys import KeyProvider
from .metrics import init_metrics
from .openapi import SPEC, SWAGGER_PAGE
from .state import Root
from .views import net, netinfo, rebuild

log = get_logger(__name__)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """config keys: DB (a pymongo database), KEYS (KeyProvider), OUTBOX_AUTOSTART (bool),
    OUTBOX_TIMEOUT (seconds), API_TOKEN (the bearer token of `/api/net/`, also sent with
    the pushes to clusters; None: open), REBUILD_MIN / REBUILD_MAX (seconds a new store
    waits for the clusters' state, see `rebuild.py`). Unset keys come from the environment.

    The rebuild gate guards a store the app opens itself (3 s / 30 s unless the
    environment says otherwise); a caller that hands in its own DB knows whether it is
    new, so there the gate is off unless configured."""
    app = Flask(__name__)
    app.config.update(OUTBOX_AUTOSTART=True, OUTBOX_TIMEOUT=2.0)
    app.config.update(config or {})
    if "API_TOKEN" not in app.config:
        app.config["API_TOKEN"] = api_token.token_from_env()
    api_token.install_guard(app, app.config["API_TOKEN"], component="root-service-manager")
    db = app.config.get("DB")
    opened_here = db is None
    app.config.setdefault(
        "REBUILD_MIN", _seconds("ROOT_REBUILD_MIN_SECONDS", 3.0 if opened_here else 0.0)
    )
    app.config.setdefault(
        "REBUILD_MAX", _seconds("ROOT_REBUILD_MAX_SECONDS", 30.0 if opened_here else 0.0)
    )
    if db is None:
        db = store.connect("root")
    keys = app.config.get("KEYS") or KeyProvider.from_env(os.environ)
    root = Root.build(
        db,
        keys,
        outbox_timeout=app.config["OUTBOX_TIMEOUT"],
        rebuild_min=app.config["REBUILD_MIN"],
        rebuild_max=app.config["REBUILD_MAX"],
    )
    app.extensions["root"] = root
    root.outbox.session.headers.update(api_token.auth_header(app.config["API_TOKEN"]))
    if app.config["OUTBOX_AUTOSTART"]:
        root.outbox.start()
    app.register_blueprint(net.bp)
    app.register_blueprint(netinfo.bp)
    app.register_blueprint(rebuild.bp)
    register_json_errors(app, rewrite=_not_restored_yet(app))
    _register_ops(app, root)
    init_metrics(app)
    return app


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise SystemExit(f"{name} must be between 0 and 3600 seconds, got {value}")
    return value


def _not_restored_yet(app: Flask) -> Callable[[ApiError], ApiError]:
    """While the store is rebuilt, "not found" may be "not restored yet": a final 404 made
    the cluster tell its nodes the job is gone (they dropped a running service's entries)
    and the system manager think a restored service did not exist."""

    def rewrite(err: ApiError) -> ApiError:
        if err.status == 404 and app.extensions["root"].gate.rebuilding():
            return ApiError(503, f"rebuilding: {err.reason} yet; clusters are still reporting")
        return err

    return rewrite


def _register_ops(app: Flask, root: Root) -> None:
    @app.get("/healthz")
    def healthz():
        try:
            root.db.command("ping")
            ok = True
        except Exception as err:  # noqa: BLE001 - health reports, it does not raise
            log.warning("store ping failed", reason=str(err))
            ok = False
        body = {
            "status": "ok" if ok else "store unavailable",
            "store": "embedded" if store.is_embedded(root.db) else "mongodb",
            "outbox_depth": root.outbox.depth() if ok else None,
            "rebuilding": root.gate.rebuilding() if ok else None,
        }
        return jsonify(body), 200 if ok else 503

    @app.get("/docs/openapi.json")
    def openapi():
        return jsonify(SPEC)

    @app.get("/api/docs")
    def swagger():
        return SWAGGER_PAGE
