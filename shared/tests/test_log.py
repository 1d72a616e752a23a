"""setup_logging / get_logger: what a reader of the log lines sees, in both formats."""

import json
import logging
import re

import pytest

from oakestra_net.log import RateLimitedLog, get_logger, parse_level, setup_logging
from testsupport import wait_until

HUMAN_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<level>\w+) +(?P<source>\S+): ")


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_human_line_has_time_level_source_message_and_fields(capsys):
    setup_logging("root", level="INFO", fmt="human")
    get_logger("root_service_manager.alloc").info(
        "subnet allocated", node_id="abc", subnet="10.16.0.0"
    )
    (line,) = err_lines(capsys)
    match = HUMAN_LINE.match(line)
    assert match, line
    assert line.endswith(" INFO  root.alloc: subnet allocated node_id=abc subnet=10.16.0.0")


def test_human_values_with_spaces_are_quoted(capsys):
    setup_logging("cluster", fmt="human")
    get_logger("x").warning("odd input", reason="not a number", empty="")
    (line,) = err_lines(capsys)
    assert line.endswith('WARNING cluster.x: odd input reason="not a number" empty=""')


def test_json_line_has_the_documented_keys_and_fields(capsys):
    setup_logging("cluster", level="DEBUG", fmt="json")
    get_logger("cluster_service_manager.mqtt").debug("table query", job="a.b.c.d", count=3)
    (line,) = err_lines(capsys)
    record = json.loads(line)
    assert record["level"] == "DEBUG"
    assert record["component"] == "cluster"
    assert record["logger"] == "cluster_service_manager.mqtt"
    assert record["event"] == "table query"
    assert record["job"] == "a.b.c.d" and record["count"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


def test_json_fields_never_overwrite_the_fixed_keys(capsys):
    setup_logging("root", fmt="json")
    get_logger("x").info("clash", component="mine", event="other", ts=0)
    record = json.loads(err_lines(capsys)[0])
    assert record["component"] == "root" and record["event"] == "clash"
    assert record["component_"] == "mine" and record["event_"] == "other" and record["ts_"] == 0


def test_json_serialises_odd_values_as_strings(capsys):
    setup_logging("root", fmt="json")
    get_logger("x").info("odd", where={1, 2}.__class__, when=None)
    record = json.loads(err_lines(capsys)[0])
    assert record["where"] == "<class 'set'>" and record["when"] is None


def test_exception_traceback_in_both_formats(capsys):
    setup_logging("root", fmt="human")
    log = get_logger("root_service_manager.api")
    try:
        raise KeyError("job-42")
    except KeyError:
        log.exception("handler failed", topic="nodes/n1/net/subnet")
    human = capsys.readouterr().err
    assert "ERROR root.api: handler failed topic=nodes/n1/net/subnet" in human
    assert "Traceback (most recent call last)" in human and "KeyError: 'job-42'" in human

    setup_logging("root", fmt="json")
    try:
        raise ValueError("bad ip")
    except ValueError as err:
        log.error("rejected", exc_info=err, ip="10.30.0.x")
    record = json.loads(err_lines(capsys)[0])
    assert record["ip"] == "10.30.0.x"
    assert "ValueError: bad ip" in record["exc"]


def test_stack_info_still_works(capsys):
    setup_logging("root", fmt="json")
    get_logger("x").info("where am I", stack_info=True)
    record = json.loads(err_lines(capsys)[0])
    assert "test_stack_info_still_works" in record["stack"]


def test_percent_args_are_still_formatted(capsys):
    setup_logging("root", fmt="human")
    get_logger("x").info("%d instances of %s", 3, "X1", job="X")
    assert err_lines(capsys)[0].endswith("root.x: 3 instances of X1 job=X")


def test_setup_is_idempotent_and_the_last_call_wins(capsys):
    setup_logging("root", fmt="human")
    setup_logging("root", fmt="json", level="WARNING")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_oakestra_net", False)]
    assert len(ours) == 1
    log = get_logger("x")
    log.info("hidden")
    log.warning("shown")
    (line,) = err_lines(capsys)
    assert json.loads(line)["event"] == "shown"


def test_env_variables_select_level_and_format(capsys, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    setup_logging("net")
    get_logger("net_manager.kernel").debug("bridge ensured", bridge="goProxyBridge")
    record = json.loads(err_lines(capsys)[0])
    assert record["level"] == "DEBUG" and record["bridge"] == "goProxyBridge"


def test_defaults_are_info_and_human(capsys, monkeypatch):
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    setup_logging("net")
    log = get_logger("net_manager.api")
    log.debug("hidden")
    log.info("shown")
    (line,) = err_lines(capsys)
    assert HUMAN_LINE.match(line) and line.endswith("net.api: shown")


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"level": "LOUD"}, "log level 'LOUD'"), ({"fmt": "xml"}, "log format 'xml'")],
)
def test_bad_settings_are_rejected_by_name(kwargs, text):
    with pytest.raises(ValueError, match=text):
        setup_logging("root", **kwargs)


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("info", logging.INFO),
        (" WARNING ", logging.WARNING),
        ("warn", logging.WARNING),
        ("10", logging.DEBUG),
        ("Critical", logging.CRITICAL),
    ],
)
def test_parse_level(text, level):
    assert parse_level(text) == level


def test_fields_are_on_the_record_for_caplog(caplog):
    with caplog.at_level(logging.INFO):
        get_logger("oakestra_net.demo").info("instance deployed", instance_number=2)
    (record,) = caplog.records
    assert record.fields == {"instance_number": 2}
    assert record.funcName == "test_fields_are_on_the_record_for_caplog"


def test_bind_adds_fields_to_every_record(caplog):
    log = get_logger("oakestra_net.demo").bind(node_id="n1")
    with caplog.at_level(logging.INFO):
        log.info("one", job="a")
        log.bind(cluster="c1").info("two")
    assert [r.fields for r in caplog.records] == [
        {"node_id": "n1", "job": "a"},
        {"node_id": "n1", "cluster": "c1"},
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limited(caplog, **options):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    limiter = RateLimitedLog(get_logger("test.rate"), clock=clock, timers=False, **options)
    return limiter, clock


def events(caplog) -> list[tuple[str, dict]]:
    return [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]


def test_rate_limited_log_writes_a_burst_then_one_summary_per_window(caplog):
    limiter, clock = limited(caplog, burst=3, interval=10)
    for n in range(1000):
        limiter.warning("junk", "invalid message dropped", n=n)
    assert [fields["n"] for _, fields in events(caplog)] == [0, 1, 2]
    clock.now = 10.5
    limiter.warning("junk", "invalid message dropped", n=1000)
    lines = events(caplog)
    assert lines[3][0] == "invalid message dropped (997 more suppressed)"
    assert lines[3][1]["suppressed"] == 997 and lines[3][1]["n"] == 999
    assert lines[4] == ("invalid message dropped", {"n": 1000})
    assert len(lines) == 5 and limiter.suppressed_total == 997


def test_rate_limited_log_keys_are_independent_and_bounded(caplog):
    limiter, _clock = limited(caplog, burst=1, max_keys=2)
    for key in ("a", "b", "c", "d", "a"):
        limiter.warning(key, "rejected", key_=key)
    logged = [fields["key_"] for _, fields in events(caplog)]
    assert logged == ["a", "b", "c"]  # c and d share "other": d is suppressed, a too
    limiter.flush()
    summaries = [fields for event, fields in events(caplog) if "suppressed" in fields]
    assert sorted((f["rate_key"], f["suppressed"]) for f in summaries) == [("a", 1), ("other", 1)]
    limiter.flush()
    assert len(events(caplog)) == 5  # a flushed window is not summarised twice


def test_rate_limited_log_summary_arrives_without_further_events(caplog):
    caplog.set_level(logging.INFO)
    limiter = RateLimitedLog(get_logger("test.rate"), burst=1, interval=0.2)
    limiter.warning("k", "rejected")
    limiter.warning("k", "rejected")
    wait_until(lambda: len(caplog.records) == 2, timeout=5, message="no summary line")
    assert caplog.records[1].getMessage() == "rejected (1 more suppressed)"
