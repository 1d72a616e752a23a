"""Declarative settings of a console script: one table row per setting.

A `Setting` row names the environment variable (Oakestra's name where Oakestra has one),
the command-line flag, the parser, the default (as the text an operator would type), a
one-line meaning and whether the value is secret. A `SettingsTable` turns its rows into
the argparse parser (`--help` lists every row with its variable and default, `--version`,
unknown arguments are an error), resolves each value with the precedence flag > environment
> default (an empty environment value counts as unset), and renders the effective
configuration for logging with secrets masked.

Adding a setting is one row; its value appears under `values[row.field]`, where the field
is the flag without dashes (`--mqtt-host` -> `mqtt_host`). Parsers take the text and
return the value or raise ValueError saying what is wrong with it; the table prefixes the
variable or flag and the text, so every error names its source.

Rows every service manager shares (logging, gunicorn, MongoDB, the start-up check
timeout) are provided by `log_rows`, `gunicorn_rows`, `store_rows` and `startup_rows`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from oakestra_net.log import FORMATS, parse_level

Parser = Callable[[str], Any]
MASK = "***"
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key", re.IGNORECASE)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable or flag."""


@dataclass(frozen=True)
class Setting:
    """One setting: `env` variable, `flag`, `parse`r, textual `default` (None: unset), `help`."""

    env: str
    flag: str
    parse: Parser
    default: str | None
    help: str
    secret: bool = False

    @property
    def field(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


class SettingsTable:
    """The settings of one console script, in the order `--help` lists them."""

    def __init__(
        self,
        prog: str,
        description: str,
        rows: Iterable[Setting],
        *,
        version: str,
        epilog: str = "",
    ) -> None:
        self.prog = prog
        self.description = description
        self.rows = tuple(rows)
        self.version = version
        self.epilog = epilog
        for attribute in ("env", "flag", "field"):
            names = [getattr(row, attribute) for row in self.rows]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{prog}: settings {attribute} repeated: {', '.join(repeated)}")
        for row in self.rows:
            if not row.flag.startswith("--") or row.flag in ("--help", "--version"):
                raise ValueError(f"{prog}: {row.env} has an unusable flag {row.flag!r}")

    def row(self, env: str) -> Setting:
        return next(row for row in self.rows if row.env == env)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.prog,
            description=self.description,
            epilog=self.epilog
            + "\nEvery setting is read from its environment variable; a flag overrides it.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        parser.add_argument("--version", action="version", version=f"{self.prog} {self.version}")
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser: argparse.ArgumentParser | Any) -> None:
        """Add one option per row to `parser` (or an argument group / a subcommand's parser)."""
        for row in self.rows:
            meaning = f"{row.env}: {row.help}"
            if "(default" not in row.help:
                meaning += f" (default: {'unset' if row.default is None else row.default})"
            options: dict[str, Any] = {
                "dest": row.field,
                "default": None,
                "metavar": row.field.upper(),
                "help": meaning.replace("%", "%%"),
            }
            if row.parse is boolean:
                options.update(nargs="?", const="true", metavar="BOOL")
            parser.add_argument(row.flag, **options)

    def parse_args(self, argv: Sequence[str] | None = None) -> dict[str, str]:
        """The flags given on the command line as texts, by field.

        `--help` and `--version` print and exit 0; an unknown or malformed argument
        prints usage and exits 2 (argparse's conventions).
        """
        return self.flags(self.parser().parse_args(argv))

    def flags(self, namespace: argparse.Namespace) -> dict[str, str]:
        """The rows' flags given in a parsed `namespace` (see `add_arguments`), by field."""
        given = {row.field: getattr(namespace, row.field, None) for row in self.rows}
        return {field: text for field, text in given.items() if text}

    def texts(
        self, env: Mapping[str, str] = os.environ, flags: Mapping[str, str] | None = None
    ) -> dict[str, tuple[str, str | None]]:
        """(source, text) of every field: source is the flag, the variable, or "default"."""
        flags = flags or {}
        result: dict[str, tuple[str, str | None]] = {}
        for row in self.rows:
            flag_text = (flags.get(row.field) or "").strip()
            env_text = env.get(row.env, "").strip()
            if flag_text:
                result[row.field] = (row.flag, flag_text)
            elif env_text:
                result[row.field] = (row.env, env_text)
            else:
                result[row.field] = ("default", row.default)
        return result

    def values(
        self, env: Mapping[str, str] = os.environ, flags: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Every field's parsed value (None when unset); ConfigError names the bad source."""
        result: dict[str, Any] = {}
        texts = self.texts(env, flags)
        for row in self.rows:
            source, text = texts[row.field]
            if text is None:
                result[row.field] = None
                continue
            try:
                result[row.field] = row.parse(text)
            except ValueError as err:
                name = row.env if source == "default" else source
                shown = MASK if row.secret else repr(text)
                raise ConfigError(f"{name}={shown} {err}") from None
        return result

    def export(self, flags: Mapping[str, str], environ: Any = os.environ) -> None:
        """Write the flags' texts into `environ` under their variables.

        Code that reads the environment (the app factory in a gunicorn worker, the store,
        the log setup) then sees the same effective value as the command line.
        """
        for row in self.rows:
            text = (flags.get(row.field) or "").strip()
            if text:
                environ[row.env] = text

    def effective(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The effective configuration by variable name, fit for a log line."""
        return {row.env: display(row, values.get(row.field)) for row in self.rows}


def display(row: Setting, value: Any) -> Any:
    """`value` as logged: secrets masked, credentials inside URLs masked, long text shortened."""
    if value is None:
        return None
    if row.secret:
        return MASK
    if isinstance(value, str):
        if "\n" in value:
            return f"<text, {value.count(chr(10)) + 1} lines>"
        if "://" in value:
            return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """`url` with the password of its user part and secret-looking query values masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{MASK}@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs]
        query = urlencode(masked, safe="*")
    return parts._replace(netloc=netloc, query=query).geturl()


# -- parsers: text -> value, ValueError says what is wrong (without the name) ------------


def text(value: str) -> str:
    return value


def port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError("is not a TCP port (1-65535)")
    return int(value)


def host(value: str) -> str:
    """A host name or address; brackets around an IPv6 address are dropped."""
    bare = value.strip("[]")
    if not bare or any(c in bare for c in "/ @"):
        raise ValueError("is not a host name or address")
    return bare


def number(minimum: float = 1e-3) -> Parser:
    """A parser of finite numbers >= `minimum`."""

    def parse(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            raise ValueError("is not a number") from None
        if not result >= minimum or not math.isfinite(result):
            raise ValueError(f"must be a finite number >= {minimum:g}")
        return result

    return parse


def integer(minimum: int = 1) -> Parser:
    """A parser of whole numbers >= `minimum`."""

    def parse(value: str) -> int:
        try:
            result = int(value)
        except ValueError:
            raise ValueError("is not a whole number") from None
        if result < minimum:
            raise ValueError(f"must be >= {minimum}")
        return result

    return parse


def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("is not a boolean (true/false)")


def choice(*options: str) -> Parser:
    """A parser accepting one of `options` (case-insensitive), returned in lower case."""

    def parse(value: str) -> str:
        if value.lower() not in options:
            raise ValueError(f"is not one of {', '.join(options)}")
        return value.lower()

    return parse


def log_level(value: str) -> str:
    parse_level(value)
    return value.upper()


def existing_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError("is not an existing file")
    if not os.access(value, os.R_OK):
        raise ValueError("is a file this process cannot read")
    return value


def directory_with(*names: str) -> Parser:
    """A parser of a directory that must hold the files `names`."""

    def parse(value: str) -> str:
        missing = [name for name in names if not os.path.isfile(os.path.join(value, name))]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        return value

    return parse


def pem_or_file(value: str) -> str:
    """PEM text itself, or the path of a readable file (its content is read later)."""
    if "-----BEGIN" in value:
        return value
    return existing_file(value)


def mongo_host(value: str) -> str:
    """A MongoDB host name or address (`mongomock://` selects the embedded store)."""
    return value if value.startswith("mongomock://") else host(value)


def mongo_url(value: str) -> str:
    if not value.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        raise ValueError("is not a mongodb:// or mongodb+srv:// URL (mongomock:// = embedded)")
    return value


def bind_address(value: str) -> str:
    """gunicorn's `host:port` (IPv6 in brackets) or `unix:PATH`."""
    if value.startswith("unix:"):
        return value
    address, _, port_text = value.rpartition(":")
    if not address or not port_text:
        raise ValueError("is not HOST:PORT (e.g. 127.0.0.1:10099 or [::]:10099)")
    try:
        port(port_text)
    except ValueError:
        raise ValueError(f"has a port {port_text!r} that is not a TCP port (1-65535)") from None
    return value


# -- rows shared by the service managers --------------------------------------------------


def log_rows() -> list[Setting]:
    return [
        Setting("LOG_LEVEL", "--log-level", log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
        Setting("LOG_FORMAT", "--log-format", choice(*FORMATS), "human", "human or json lines"),
    ]


def gunicorn_rows(default_workers: int) -> list[Setting]:
    return [
        Setting(
            "BIND", "--bind", bind_address, None, "listen address HOST:PORT (default: [::]:MY_PORT)"
        ),
        Setting(
            "GUNICORN_WORKERS",
            "--workers",
            integer(1),
            str(default_workers),
            "worker processes with MongoDB (always 1 with the embedded store)",
        ),
        Setting("GUNICORN_THREADS", "--threads", integer(1), "8", "threads per worker"),
        Setting("ACCESS_LOG", "--access-log", boolean, "false", "log every HTTP request"),
    ]


def store_rows(component: str) -> list[Setting]:
    """MongoDB: MONGO_URL, or Oakestra's ROOT_/CLUSTER_MONGO_URL + _MONGO_PORT."""
    prefix = component.upper()
    return [
        Setting(
            f"{prefix}_MONGO_URL",
            "--mongo-host",
            mongo_host,
            None,
            f"MongoDB host (Oakestra's name); unset with MONGO_URL unset: embedded {component} "
            "store, in memory, not persistent",
        ),
        Setting(f"{prefix}_MONGO_PORT", "--mongo-port", port, None, "MongoDB port (27017)"),
        Setting(
            "MONGO_URL",
            "--mongo-url",
            mongo_url,
            None,
            f"full MongoDB URL; wins over {prefix}_MONGO_URL",
        ),
    ]


def startup_rows() -> list[Setting]:
    return [
        Setting(
            "STARTUP_TIMEOUT",
            "--startup-timeout",
            number(0.1),
            "10",
            "seconds to wait at start for MongoDB (and the broker) before giving up",
        )
    ]
