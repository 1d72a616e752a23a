"""`cluster-service-manager`: check the settings, MongoDB and the broker, then serve with gunicorn.

`--help` lists every setting (config.SETTINGS) with its variable and default; flags win
over the environment. Before gunicorn starts, a bad value fails at once, a real MongoDB
must answer a ping and the broker must accept a connection with the configured
credentials (both within STARTUP_TIMEOUT). The app (and with it the MQTT client) is
created in the worker after the fork, never in the master. With the embedded store
there is exactly one worker (its state is that process's memory); with a real MongoDB,
GUNICORN_WORKERS (default 1) workers share the nodes' messages through the MQTT shared
subscription. `BIND` overrides the listen address.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from oakestra_net import store
from oakestra_net.console import exit_unavailable, load_settings
from oakestra_net.log import get_logger
from oakestra_net.serving import serve
from oakestra_net.startcheck import mongo_problem, mqtt_problem

from .config import SETTINGS, Settings

COMPONENT = "cluster-service-manager"
log = get_logger(__name__)


def gunicorn_options(settings: Settings, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    values = SETTINGS.values(env)
    embedded = store.mongo_url_from_env("cluster", env) is None
    return {
        "bind": [values["bind"] or f"[::]:{settings.port}"],
        "workers": 1 if embedded else values["workers"],
        "worker_class": "gthread",
        "threads": values["threads"],
        "timeout": 60,
        "graceful_timeout": 10,
        "preload_app": False,
        # gunicorn >= 25 opens a control socket at one per-user path: several servers on a
        # host would fight over it, and a user without a home directory cannot create it.
        "control_socket_disable": True,
        "accesslog": "-" if values["access_log"] else None,
        "worker_exit": _worker_exit,
    }


def _worker_exit(_server, worker) -> None:
    """Disconnect from the broker cleanly when a worker stops."""
    app = getattr(worker, "wsgi", None)
    parts = getattr(app, "extensions", {}).get("cluster_service_manager")
    if parts is not None:
        parts.stop()


def main(argv: Sequence[str] | None = None) -> None:
    values = load_settings(SETTINGS, COMPONENT, argv, check=_check)
    settings = Settings.from_values(values)
    mongo_url = store.mongo_url_from_env("cluster", os.environ)
    options = gunicorn_options(settings)
    timeout = values["startup_timeout"]
    if mongo_url is not None:
        names = "MONGO_URL" if values["mongo_url"] else "CLUSTER_MONGO_URL / CLUSTER_MONGO_PORT"
        problem = mongo_problem(mongo_url, timeout, names=names)
        if problem:
            exit_unavailable(COMPONENT, problem)
    problem = mqtt_problem(settings.mqtt_config(), timeout)
    if problem:
        exit_unavailable(COMPONENT, problem)
    log.info("starting", bind=options["bind"][0], workers=options["workers"])
    serve(_load_app, options)


def _check(values: Mapping[str, Any]) -> None:
    """The rules across settings: Settings' own, and the MongoDB variables together."""
    Settings.from_values(values)
    store.mongo_url_from_env("cluster", os.environ)


def _load_app():
    from .app import create_app  # in the worker, after the fork

    return create_app()


if __name__ == "__main__":
    main()
