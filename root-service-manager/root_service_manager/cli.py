"""`root-service-manager`: serve the app with gunicorn on [::]:${MY_PORT:-10099}.

With the embedded store (no MONGO_URL / ROOT_MONGO_URL) there is exactly one worker
process, because the in-memory store cannot be shared; with a real MongoDB the
worker count comes from GUNICORN_WORKERS (default 2).
"""

from __future__ import annotations

import os
import sys

from oakestra_net import api_token, store
from oakestra_net.log import get_logger, setup_logging
from oakestra_net.serving import serve

log = get_logger(__name__)


def main() -> None:
    setup_logging("root-service-manager")
    try:
        api_token.token_from_env()  # checked here, so a bad value fails before gunicorn starts
    except api_token.TokenError as err:
        log.error("bad configuration", reason=str(err))
        sys.exit(2)
    port = int(os.environ.get("MY_PORT", "10099"))
    embedded = store.mongo_url_from_env("root") is None
    workers = 1 if embedded else int(os.environ.get("GUNICORN_WORKERS", "2"))
    log.info("starting", port=port, workers=workers, store="embedded" if embedded else "mongodb")
    serve(
        _load_app,
        {
            "bind": [os.environ.get("BIND", f"[::]:{port}")],
            "workers": workers,
            "worker_class": "gthread",
            "threads": int(os.environ.get("GUNICORN_THREADS", "8")),
            "timeout": 30,
            # gunicorn's per-user control socket (~/.gunicorn) clashes between servers on
            # one host, and the image's user has no home directory
            "control_socket_disable": True,
            "accesslog": "-" if os.environ.get("ACCESS_LOG") else None,
        },
    )


def _load_app():
    from .app import create_app  # in the worker, after the fork

    return create_app()


if __name__ == "__main__":
    main()
