"""Settings of the root service manager's console script: one row per setting.

Oakestra's variables keep their names and meaning (`MY_PORT`, `ROOT_MONGO_URL`,
`ROOT_MONGO_PORT`, `JWT_GENERATOR_URL`, `JWT_GENERATOR_PORT`); the others are ours.
The app factory and the store read the same variables from the environment, into which
the console script exports the command-line flags.
"""

from __future__ import annotations

from importlib import metadata

from oakestra_net import api_token
from oakestra_net import settings as s

DEFAULT_PORT = 10099

SETTINGS = s.SettingsTable(
    "root-service-manager",
    "Oakestra's root service manager: node subnets, service IPs, table queries.",
    [
        s.Setting("MY_PORT", "--port", s.port, str(DEFAULT_PORT), "port of the HTTP API"),
        *s.store_rows("root"),
        s.Setting(
            api_token.ENV_VAR,
            "--api-token",
            api_token.parse_token,
            None,
            "bearer token required on /api/net/ (unset: open, logged loudly)",
            secret=True,
        ),
        s.Setting(
            "JWT_GENERATOR_URL",
            "--jwt-generator-url",
            s.host,
            "localhost",
            "host of Oakestra's JWT generator (the netinfo API's public key)",
        ),
        s.Setting(
            "JWT_GENERATOR_PORT",
            "--jwt-generator-port",
            s.port,
            "10011",
            "port of the JWT generator",
        ),
        s.Setting(
            "JWT_PUBLIC_KEY",
            "--jwt-public-key",
            s.pem_or_file,
            None,
            "RS256 public key (PEM text or file) instead of asking the generator",
        ),
        s.Setting(
            "ROOT_REBUILD_MIN_SECONDS",
            "--rebuild-min-seconds",
            s.number(0),
            "3",
            "on a new store: seconds allocation waits at least for the clusters' state",
        ),
        s.Setting(
            "ROOT_REBUILD_MAX_SECONDS",
            "--rebuild-max-seconds",
            s.number(0),
            "30",
            "on a new store: seconds allocation waits at most for clusters that never report",
        ),
        *s.gunicorn_rows(default_workers=2),
        *s.startup_rows(),
        *s.log_rows(),
    ],
    version=metadata.version("oakestra-root-service-manager"),
    epilog="Exit status: 0 after --help/--version or a clean stop, 2 for a bad argument or\n"
    "value, 1 when MongoDB does not answer at start.",
)
