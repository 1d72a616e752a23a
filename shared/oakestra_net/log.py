"""Logging for every component: one stderr handler, human or JSON lines, structured fields.

`setup_logging` configures the root logger once per process (calling it again replaces
the previous configuration). `get_logger` returns an `EventLogger` whose methods take
keyword fields (`log.info("subnet allocated", node_id=n, subnet=s)`); the fields travel
on the record as `record.fields` and both formats print them. Where the lines go
(stderr) and what reads them (journald, docker, a terminal) is left to the deployment.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

FORMATS = ("human", "json")
_STANDARD_KWARGS = ("exc_info", "stack_info", "stacklevel", "extra")
_RESERVED_JSON_KEYS = frozenset({"ts", "level", "component", "logger", "event", "exc", "stack"})


class EventLogger(logging.LoggerAdapter):
    """A logger whose methods take structured keyword fields besides the standard ones.

    `level` and `msg` cannot be field names (they are the parameters of `log()`).
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        standard = {key: kwargs.pop(key) for key in _STANDARD_KWARGS if key in kwargs}
        extra = dict(standard.pop("extra", None) or {})
        extra["fields"] = {**(self.extra or {}), **extra.get("fields", {}), **kwargs}
        standard["extra"] = extra
        return msg, standard

    def bind(self, **fields: Any) -> EventLogger:
        """A logger for the same name that adds `fields` to every record."""
        return EventLogger(self.logger, {**(self.extra or {}), **fields})


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(name), {})


OTHER_KEY = "other"


class RateLimitedLog:
    """Log lines about rejected input, at most `burst` per key per `interval` seconds.

    A flood of junk must not become a flood of log lines: the first `burst` events of a
    key in a window are logged as usual, the rest only counted, and when the window ends
    one summary line `"<event> (N more suppressed)"` reports the count (at the latest
    `interval` seconds after the first suppressed event, from a timer thread; `flush`
    writes pending summaries at once). Keys should be few (a topic kind, an endpoint and
    status); beyond `max_keys` distinct keys in a window they share the key "other".
    """

    def __init__(
        self,
        logger: EventLogger,
        *,
        burst: int = 5,
        interval: float = 10.0,
        max_keys: int = 256,
        clock: Callable[[], float] = time.monotonic,
        timers: bool = True,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._timers = timers
        self._lock = threading.Lock()
        # key -> [window start, logged, suppressed, level, event, fields of the last one]
        self._windows: dict[str, list[Any]] = {}
        self.suppressed_total = 0

    def warning(self, key: str, event: str, **fields: Any) -> None:
        self.log(logging.WARNING, key, event, **fields)

    def info(self, key: str, event: str, **fields: Any) -> None:
        self.log(logging.INFO, key, event, **fields)

    def log(self, level: int, key: str, event: str, **fields: Any) -> None:
        now = self._clock()
        summary = None
        start_timer = False
        with self._lock:
            if key not in self._windows and len(self._windows) >= self.max_keys:
                key = OTHER_KEY
            window = self._windows.get(key)
            if window is not None and now - window[0] >= self.interval:
                summary = self._close(key)
                window = None
            if window is None:
                window = self._windows[key] = [now, 0, 0, level, event, {}]
            if window[1] < self.burst:
                window[1] += 1
                emit = True
            else:
                window[2] += 1
                window[3:] = [level, event, fields]
                self.suppressed_total += 1
                emit = False
                start_timer = self._timers and window[2] == 1
        if summary:
            self._write_summary(*summary)
        if emit:
            self.logger.log(level, event, **fields)
        elif start_timer:
            delay = max(0.0, window[0] + self.interval - now)
            timer = threading.Timer(delay, self._expire, args=(key, window[0]))
            timer.daemon = True
            timer.start()

    def flush(self) -> None:
        """Write the summary of every key with suppressed lines now and end its window."""
        with self._lock:
            summaries = [self._close(key) for key in list(self._windows)]
        for summary in summaries:
            if summary:
                self._write_summary(*summary)

    def _expire(self, key: str, started: float) -> None:
        with self._lock:
            window = self._windows.get(key)
            summary = self._close(key) if window is not None and window[0] == started else None
        if summary:
            self._write_summary(*summary)

    def _close(self, key: str) -> tuple[str, int, int, str, dict[str, Any]] | None:
        """End the window of `key`; its summary if it suppressed anything (lock held)."""
        _start, _logged, suppressed, level, event, fields = self._windows.pop(key)
        return (key, suppressed, level, event, fields) if suppressed else None

    def _write_summary(
        self, key: str, suppressed: int, level: int, event: str, fields: dict[str, Any]
    ) -> None:
        self.logger.log(
            level,
            f"{event} ({suppressed} more suppressed)",
            **fields,
            rate_key=key,
            suppressed=suppressed,
        )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (survives test capture swaps)."""

    _oakestra_net = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(component: str, *, level: str | None = None, fmt: str | None = None) -> None:
    """Log to stderr at `level` (env LOG_LEVEL, default INFO) in `fmt` (env LOG_FORMAT)."""
    level_no = parse_level(level if level is not None else os.environ.get("LOG_LEVEL", "INFO"))
    fmt = (fmt if fmt is not None else os.environ.get("LOG_FORMAT", "human")).strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_oakestra_net", False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else HumanFormatter(component))
    root.addHandler(handler)
    root.setLevel(level_no)


def parse_level(value: str) -> int:
    """`"info"`, `"WARNING"`, `"10"` -> the logging level number; anything else is ValueError."""
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    number = logging.getLevelNamesMapping().get(text)
    if number is None:
        raise ValueError(f"log level {value!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return number


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    return getattr(record, "fields", None) or {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, component, logger, event, then the fields."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record, millis=True),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            line[f"{key}_" if key in _RESERVED_JSON_KEYS else key] = value
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`2026-11-22T02:12:45Z INFO  root.alloc: subnet allocated node_id=abc subnet=10.16.0.0`.

    The logger name is shown under the component: its top-level package is replaced by
    the component (`root_service_manager.alloc` -> `root.alloc`); JSON keeps the full name.
    """

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        text = (
            f"{_timestamp(record, millis=False)} {record.levelname:<5} "
            f"{self._source(record.name)}: {record.getMessage()}"
        )
        fields = " ".join(f"{key}={_human_value(v)}" for key, v in record_fields(record).items())
        if fields:
            text = f"{text} {fields}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text

    def _source(self, name: str) -> str:
        if name == "root":
            return self.component
        _package, dot, rest = name.partition(".")
        return f"{self.component}.{rest if dot else name}"


def _timestamp(record: logging.LogRecord, *, millis: bool) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _human_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text
