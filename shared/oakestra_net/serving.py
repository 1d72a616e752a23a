"""Serving a Flask app with gunicorn from a console script (the managers' CLIs).

gunicorn is imported only here and only when serving, so components that never
serve with it (the node daemon) do not need it installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def serve(load_app: Callable[[], Any], options: dict[str, Any]) -> None:
    """Run gunicorn with `options` (gunicorn setting names); `load_app` runs in each worker."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return load_app()

    Server().run()
