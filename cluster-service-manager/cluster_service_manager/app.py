"""Flask app factory of the cluster service manager: builds the parts and wires them.

`create_app(config)` config keys (all optional): `DB` (a pymongo database; default
`oakestra_net.store.connect("cluster")`), `SETTINGS` (`config.Settings`; default from
the environment), `MQTT_AUTOSTART` (default True: connect to the broker now),
`ROOT_WATCH_INTERVAL` (seconds between checks of the root's store generation). The
MQTT client and the lane workers start inside the process that calls create_app, so
under gunicorn they run in the worker, never in the master. The parts live in
`app.extensions["cluster_service_manager"]`; `Parts.stop()` ends their threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask

from oakestra_net import api_token, store
from oakestra_net.http_errors import register_json_errors
from oakestra_net.log import get_logger
from oakestra_net.messages import AddressChanged, ServiceDeployed, ServiceUndeployed, SubnetRequest
from oakestra_net.mqtt import MqttClient

from . import views
from .cache import JobCache
from .config import Settings
from .deployments import Deployments
from .directory import Directory
from .handlers import Handlers
from .lanes import Lanes
from .metrics import Metrics
from .mqtt_endpoint import MqttEndpoint
from .replies import Replies
from .root_client import NotFound, RootClient, RootRejected, RootUnavailable
from .root_watch import RootWatch
from .root_work import RootWork, StoredJournal, replay

log = get_logger(__name__)

REGISTRATION_LANE = "cluster-registration"


@dataclass
class Parts:
    settings: Settings
    db: Any
    metrics: Metrics
    root: RootClient
    cache: JobCache
    lanes: Lanes
    directory: Directory
    handlers: Handlers
    deployments: Deployments
    endpoint: MqttEndpoint
    watch: RootWatch
    journal: StoredJournal

    def stop(self) -> None:
        self.watch.stop()
        self.endpoint.stop()
        self.lanes.stop()
        self.root.close()


def build_parts(settings: Settings, db: Any, watch_interval: float = 1.0) -> Parts:
    metrics = Metrics()
    root = RootClient(
        settings.root_base_url,
        timeout=settings.root_timeout,
        attempts=settings.root_attempts,
        backoff=settings.root_backoff,
        on_call=metrics.root_call,
    )
    root.session.headers.update(api_token.auth_header(settings.api_token))
    cache = JobCache(db, settings.cluster_id)
    cache.ensure_indexes()
    journal = StoredJournal(db)
    lanes = Lanes(
        workers=settings.root_workers,
        retryable=(RootUnavailable,),
        final=(NotFound, RootRejected),
        max_age=settings.retry_max_age,
        name="root-work",
        journal=journal,
    )
    client = MqttClient(settings.mqtt_config(), workers=settings.mqtt_workers, name="cluster-sm")
    replies = Replies(client.publish)
    directory = Directory(cache, root)
    work = RootWork(root, directory)
    handlers = Handlers(cache, directory, root, lanes, replies, metrics, work)
    deployments = Deployments(cache, directory, lanes, replies)
    shared = settings.mqtt_shared if settings.mqtt_shared is not None else not store.is_embedded(db)
    endpoint = MqttEndpoint(client, handlers, shared=shared, metrics=metrics)
    watch = RootWatch(
        root,
        cache,
        settings.self_registration,
        interval=watch_interval,
        meta=db["cluster_meta"],
        drop_interest=directory.drop_root_interest,
        refill=directory.fetch_by_name,
        dropping=journal.interest_drops,
    )
    root.on_unknown_cluster = watch.trigger
    metrics.gauge(
        "oakestra_cluster_state_pushes", "state pushes to new roots", lambda: watch.pushes
    )
    metrics.gauge(
        "oakestra_cluster_registration_known",
        "1 if this cluster can register itself again at a root that lost its store",
        lambda: watch.can_register(),
    )
    metrics.gauge("oakestra_cluster_pending_root_work", "steps waiting for the root", lanes.pending)
    metrics.gauge("oakestra_cluster_journaled_root_work", "steps kept for a restart", journal.count)
    metrics.gauge("oakestra_cluster_cached_jobs", "jobs in the cache", cache.count)
    metrics.gauge("oakestra_cluster_broker_connected", "1 if connected", lambda: client.connected)
    return Parts(
        settings,
        db,
        metrics,
        root,
        cache,
        lanes,
        directory,
        handlers,
        deployments,
        endpoint,
        watch,
        journal,
    )


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(MQTT_AUTOSTART=True, ROOT_WATCH_INTERVAL=1.0)
    app.config.update(config or {})
    settings = app.config.get("SETTINGS") or Settings.from_env()
    db = app.config.get("DB")
    if db is None:
        db = store.connect("cluster")
    parts = build_parts(settings, db, app.config["ROOT_WATCH_INTERVAL"])
    app.extensions["cluster_service_manager"] = parts
    api_token.install_guard(app, settings.api_token, component="cluster-service-manager")
    app.register_blueprint(views.net)
    app.register_blueprint(views.ops)
    register_json_errors(app)
    _replay(parts)
    parts.lanes.start()
    if app.config["MQTT_AUTOSTART"]:
        parts.endpoint.start()
    _self_register(parts)
    parts.watch.start()
    log.info(
        "cluster service manager ready",
        root=settings.root_base_url,
        broker=settings.mqtt_config().broker,
        subscription=parts.endpoint.pattern,
    )
    return app


def _replay(parts: Parts) -> None:
    """Queue the root work a previous process left in the store (before anything runs)."""
    handlers = parts.handlers
    by_type = {
        SubnetRequest: handlers.subnet,
        ServiceDeployed: handlers.service_deployed,
        ServiceUndeployed: handlers.service_undeployed,
        AddressChanged: handlers.address_changed,
    }

    def dispatch(node_id: str, msg: Any) -> None:
        by_type[type(msg)](node_id, msg)

    replay(parts.journal, parts.lanes, handlers.work, dispatch)


def _self_register(parts: Parts) -> None:
    """Standalone use: register this cluster at the root (Oakestra's system manager does it)."""
    registration = parts.settings.self_registration
    if registration is None:
        return
    cluster_id, address, port = registration

    def register() -> None:
        parts.root.register_cluster(cluster_id, address, port)
        log.info("cluster registered at root", cluster_id=cluster_id, address=address, port=port)

    parts.lanes.submit(REGISTRATION_LANE, "cluster registration", register)
