"""`cluster-service-manager`: serve the app with gunicorn (gthread) on [::]:${MY_PORT:-10110}.

Settings are checked before gunicorn starts, so a bad variable fails at once. The app
(and with it the MQTT client) is created in the worker after the fork, never in the
master. With the embedded store there is exactly one worker (its state is that
process's memory); with a real MongoDB, GUNICORN_WORKERS (default 1) workers share
the nodes' messages through the MQTT shared subscription. `BIND` overrides the
listen address.
"""

from __future__ import annotations

import os
import sys

from oakestra_net import store
from oakestra_net.log import get_logger, setup_logging
from oakestra_net.serving import serve

from .config import ConfigError, Settings

log = get_logger(__name__)


def gunicorn_options(settings: Settings, env=os.environ) -> dict:
    embedded = store.mongo_url_from_env("cluster", env) is None
    workers = 1 if embedded else int(env.get("GUNICORN_WORKERS", "1"))
    return {
        "bind": [env.get("BIND", f"[::]:{settings.port}")],
        "workers": workers,
        "worker_class": "gthread",
        "threads": int(env.get("GUNICORN_THREADS", "8")),
        "timeout": 60,
        "graceful_timeout": 10,
        "preload_app": False,
        # gunicorn >= 25 opens a control socket at one per-user path: several servers on a
        # host would fight over it, and a user without a home directory cannot create it.
        "control_socket_disable": True,
        "accesslog": "-" if env.get("ACCESS_LOG") else None,
        "worker_exit": _worker_exit,
    }


def _worker_exit(_server, worker) -> None:
    """Disconnect from the broker cleanly when a worker stops."""
    app = getattr(worker, "wsgi", None)
    parts = getattr(app, "extensions", {}).get("cluster_service_manager")
    if parts is not None:
        parts.stop()


def main() -> None:
    setup_logging("cluster-service-manager")
    try:
        settings = Settings.from_env()
        options = gunicorn_options(settings)
    except (ConfigError, ValueError) as err:
        log.error("bad configuration", reason=str(err))
        sys.exit(2)
    log.info("starting", bind=options["bind"][0], workers=options["workers"])
    serve(_load_app, options)


def _load_app():
    from .app import create_app  # in the worker, after the fork

    return create_app()


if __name__ == "__main__":
    main()
