"""Serving a Flask app with gunicorn from a console script (the managers' CLIs).

gunicorn is imported only here and only when serving, so components that never
serve with it (the node daemon) do not need it installed. The threaded worker
("gthread") is replaced by `oakestra_net.gthread_worker.ThreadWorker`, which keeps slow
and idle clients from holding the worker's threads and answers refused requests in JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WORKER_CLASS = "oakestra_net.gthread_worker.ThreadWorker"
DEFAULTS: dict[str, Any] = {
    "worker_class": WORKER_CLASS,
    # a kept-alive connection without a new request is closed after this many seconds
    "keepalive": 5,
}


def gunicorn_settings(options: dict[str, Any]) -> dict[str, Any]:
    """`options` over the defaults, with "gthread" meaning the hardened threaded worker."""
    settings = {**DEFAULTS, **options}
    if settings["worker_class"] in ("gthread", "gunicorn.workers.gthread.ThreadWorker"):
        settings["worker_class"] = WORKER_CLASS
    return settings


def serve(load_app: Callable[[], Any], options: dict[str, Any]) -> None:
    """Run gunicorn with `options` (gunicorn setting names); `load_app` runs in each worker."""
    from gunicorn.app.base import BaseApplication

    settings = gunicorn_settings(options)

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return load_app()

    Server().run()
