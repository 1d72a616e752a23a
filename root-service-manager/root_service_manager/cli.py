"""`root-service-manager`: check the settings and MongoDB, then serve the app with gunicorn.

`--help` lists every setting (config.SETTINGS) with its variable and default. Flags win
over the environment. Nothing listens before the settings parsed and, with a real
MongoDB, a ping answered within STARTUP_TIMEOUT. With the embedded store (no MONGO_URL /
ROOT_MONGO_URL) there is exactly one worker process, because the in-memory store cannot
be shared; with a real MongoDB the worker count comes from GUNICORN_WORKERS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from oakestra_net import store
from oakestra_net.console import exit_unavailable, load_settings
from oakestra_net.log import get_logger
from oakestra_net.serving import serve
from oakestra_net.startcheck import mongo_problem

from .config import SETTINGS

COMPONENT = "root-service-manager"
log = get_logger(__name__)


def gunicorn_options(values: Mapping[str, Any], mongo_url: str | None) -> dict[str, Any]:
    return {
        "bind": [values["bind"] or f"[::]:{values['port']}"],
        "workers": 1 if mongo_url is None else values["workers"],
        "worker_class": "gthread",
        "threads": values["threads"],
        "timeout": 30,
        # gunicorn's per-user control socket (~/.gunicorn) clashes between servers on
        # one host, and the image's user has no home directory
        "control_socket_disable": True,
        "accesslog": "-" if values["access_log"] else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    values = load_settings(SETTINGS, COMPONENT, argv, check=_mongo_url)
    mongo_url = _mongo_url(values)
    if mongo_url is not None:
        names = "MONGO_URL" if values["mongo_url"] else "ROOT_MONGO_URL / ROOT_MONGO_PORT"
        problem = mongo_problem(mongo_url, values["startup_timeout"], names=names)
        if problem:
            exit_unavailable(COMPONENT, problem)
    options = gunicorn_options(values, mongo_url)
    log.info(
        "starting",
        bind=options["bind"][0],
        workers=options["workers"],
        store="embedded" if mongo_url is None else "mongodb",
    )
    serve(_load_app, options)


def _mongo_url(_values: Mapping[str, Any]) -> str | None:
    return store.mongo_url_from_env("root", os.environ)


def _load_app():
    from .app import create_app  # in the worker, after the fork

    return create_app()


if __name__ == "__main__":
    main()
