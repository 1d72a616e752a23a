"""Start of a console script: command line and environment, logging, effective configuration.

`load_settings` is what every service's `main()` calls first: it parses the command line
(`--help` / `--version` / an unknown argument exit here, before anything is opened),
resolves the settings table (flag > environment > default), exports the flags into the
process environment so readers of the environment agree, runs the component's checks
across settings, sets up logging and logs the
effective configuration once, secrets masked. `exit_bad_configuration` ends the process
with one log line and a non-zero status instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from oakestra_net.log import get_logger, setup_logging
from oakestra_net.settings import SettingsTable

log = get_logger(__name__)

EXIT_BAD_VALUE = 2  # a setting cannot be used as given (argparse's usage error code)
EXIT_UNAVAILABLE = 1  # a dependency failed the start-up check


def load_settings(
    table: SettingsTable,
    component: str,
    argv: Sequence[str] | None = None,
    environ: Any = os.environ,
    *,
    check: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """The effective settings; exits 0 for --help/--version, 2 for a bad argument or value.

    `check(values)` runs after the flags are exported into `environ`, for rules that involve several
    settings; a ValueError (ConfigError included) it raises is a bad value too.
    """
    flags = table.parse_args(argv)
    table.export(flags, environ)  # also lets a bad-configuration line use --log-format
    try:
        values = table.values(environ, flags)
        if check is not None:
            check(values)
    except ValueError as err:
        exit_bad_configuration(component, str(err))
    setup_logging(component, level=values.get("log_level"), fmt=values.get("log_format"))
    log.info("effective configuration", **table.effective(values))
    return values


def exit_bad_configuration(component: str, reason: str, code: int = EXIT_BAD_VALUE) -> NoReturn:
    """Log `reason` as one ERROR line and exit with `code`."""
    _exit(component, "bad configuration", reason, code)


def exit_unavailable(component: str, reason: str) -> NoReturn:
    """A dependency failed the start-up check: one ERROR line, exit status 1."""
    _exit(component, "cannot start", reason, EXIT_UNAVAILABLE)


def _exit(component: str, event: str, reason: str, code: int) -> NoReturn:
    if not _logging_ready():
        try:
            setup_logging(component)
        except ValueError:  # LOG_LEVEL / LOG_FORMAT themselves are bad
            setup_logging(component, level="INFO", fmt="human")
    log.error(event, reason=reason)
    sys.exit(code)


def _logging_ready() -> bool:
    return any(getattr(h, "_oakestra_net", False) for h in logging.getLogger().handlers)
