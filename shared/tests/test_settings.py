"""The settings table: help text, precedence, errors naming their source, masking."""

from __future__ import annotations

import argparse

import pytest

from oakestra_net import settings as s
from oakestra_net.settings import ConfigError, Setting, SettingsTable


def _table() -> SettingsTable:
    return SettingsTable(
        "demo",
        "A demo service.",
        [
            Setting("MY_PORT", "--port", s.port, "10099", "port of the HTTP API"),
            Setting("BROKER_HOST", "--broker-host", s.host, "localhost", "broker host"),
            Setting("DEMO_TOKEN", "--token", s.text, None, "bearer token", secret=True),
            Setting("DEMO_VERBOSE", "--verbose", s.boolean, "false", "say more"),
            Setting("MONGO_URL", "--mongo-url", s.mongo_url, None, "MongoDB URL"),
            Setting("DEMO_RATE", "--rate", s.number(0.5), "1.5", "per second (default: fast)"),
        ],
        version="1.2.3",
    )


def test_help_lists_every_variable_flag_and_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _table().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "A demo service." in out
    for env, flag, default in [
        ("MY_PORT", "--port", "(default: 10099)"),
        ("BROKER_HOST", "--broker-host", "(default: localhost)"),
        ("DEMO_TOKEN", "--token", "(default: unset)"),
        ("DEMO_RATE", "--rate", "(default: fast)"),
    ]:
        assert env in out and flag in out and default in out, (env, out)
    assert "(default: fast) (default" not in " ".join(out.split())


def test_version_and_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _table().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "demo 1.2.3"
    with pytest.raises(SystemExit) as exit_info:
        _table().parse_args(["--prot", "1"])  # no abbreviations: a typo is an error
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --prot" in capsys.readouterr().err


def test_flag_beats_environment_beats_default():
    table = _table()
    assert table.values({})["port"] == 10099
    assert table.values({"MY_PORT": "2000"})["port"] == 2000
    flags = table.parse_args(["--port", "3000"])
    assert table.values({"MY_PORT": "2000"}, flags)["port"] == 3000
    assert table.values({"MY_PORT": "  "})["port"] == 10099  # empty counts as unset
    assert table.texts({"MY_PORT": "2000"}, flags)["port"] == ("--port", "3000")


def test_errors_name_the_flag_or_the_variable_and_hide_secrets():
    table = _table()
    with pytest.raises(ConfigError, match=r"^MY_PORT='http' is not a TCP port \(1-65535\)$"):
        table.values({"MY_PORT": "http"})
    with pytest.raises(ConfigError, match=r"^--port='0' is not a TCP port"):
        table.values({"MY_PORT": "http"}, table.parse_args(["--port=0"]))
    with pytest.raises(ConfigError, match=r"^--rate='0.1' must be a finite number >= 0.5$"):
        table.values({}, {"rate": "0.1"})
    with pytest.raises(ConfigError, match=r"^MONGO_URL='db:27017' is not a mongodb://"):
        table.values({"MONGO_URL": "db:27017"})


def test_boolean_flag_may_stand_alone():
    table = _table()
    assert table.values({}, table.parse_args(["--verbose"]))["verbose"] is True
    assert (
        table.values({"DEMO_VERBOSE": "yes"}, table.parse_args(["--verbose=off"]))["verbose"]
        is False
    )
    with pytest.raises(ConfigError, match="DEMO_VERBOSE='maybe' is not a boolean"):
        table.values({"DEMO_VERBOSE": "maybe"})


def test_effective_configuration_masks_secrets():
    table = _table()
    env = {
        "DEMO_TOKEN": "t0ken",
        "MONGO_URL": "mongodb://admin:hunter2@db:27017/x?authSource=admin&tlsCertificateKeyFilePassword=pw",
    }
    effective = table.effective(table.values(env))
    assert effective["DEMO_TOKEN"] == "***"
    assert effective["MONGO_URL"].startswith("mongodb://admin:***@db:27017/x?authSource=admin&")
    assert "hunter2" not in str(effective) and "t0ken" not in str(effective)
    assert "=pw" not in str(effective)
    assert effective["MY_PORT"] == 10099 and effective["MONGO_URL"] is not None
    assert table.effective(table.values({}))["DEMO_TOKEN"] is None  # unset is not a secret
    secret_port = SettingsTable(
        "x", "", [Setting("K", "--k", s.port, None, "", secret=True)], version="1"
    )
    with pytest.raises(ConfigError) as error:
        secret_port.values({"K": "s3cret"})
    assert "s3cret" not in str(error.value) and "K=***" in str(error.value)


def test_export_writes_flags_into_the_environment():
    table = _table()
    environ = {"MY_PORT": "2000", "BROKER_HOST": "a"}
    table.export(table.parse_args(["--port", "3000"]), environ)
    assert environ == {"MY_PORT": "3000", "BROKER_HOST": "a"}


def test_rows_must_not_repeat_names():
    row = Setting("A", "--a", s.text, None, "")
    with pytest.raises(ValueError, match="env repeated: A"):
        SettingsTable("x", "", [row, Setting("A", "--b", s.text, None, "")], version="1")
    with pytest.raises(ValueError, match="flag repeated: --a"):
        SettingsTable("x", "", [row, Setting("B", "--a", s.text, None, "")], version="1")
    with pytest.raises(ValueError, match="unusable flag"):
        SettingsTable("x", "", [Setting("V", "--version", s.text, None, "")], version="1")


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (s.port, "65536", "not a TCP port"),
        (s.host, "", "not a host"),
        (s.host, "http://x", "not a host"),
        (s.integer(1), "2.5", "not a whole number"),
        (s.integer(1), "0", ">= 1"),
        (s.number(), "inf", "finite"),
        (s.choice("human", "json"), "xml", "one of human, json"),
        (s.log_level, "loud", "not one of DEBUG"),
        (s.existing_file, "/nonexistent/key.pem", "not an existing file"),
        (s.pem_or_file, "/nonexistent/key.pem", "not an existing file"),
        (s.bind_address, "10099", "HOST:PORT"),
        (s.bind_address, "127.0.0.1:x", "not a TCP port"),
    ],
)
def test_parsers_reject_with_a_reason(parser, text, message):
    with pytest.raises(ValueError, match=message):
        parser(text)


def test_parsers_accept():
    assert s.host("[fd00::1]") == "fd00::1"
    assert s.log_level("debug") == "DEBUG"
    assert s.bind_address("[::1]:80") == "[::1]:80"
    assert s.pem_or_file("-----BEGIN PUBLIC KEY-----\nx").startswith("-----BEGIN")
    assert s.mongo_host("mongomock://") == "mongomock://"


def test_directory_with_names_the_missing_files(tmp_path):
    parse = s.directory_with("ca.crt", "key")
    (tmp_path / "key").write_text("x")
    with pytest.raises(ValueError, match="^lacks ca.crt$"):
        parse(str(tmp_path))
    (tmp_path / "ca.crt").write_text("x")
    assert parse(str(tmp_path)) == str(tmp_path)


def test_rows_can_join_an_existing_parser_with_subcommands():
    parser = argparse.ArgumentParser(prog="tool", allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    table = _table()
    table.add_arguments(run)
    namespace = parser.parse_args(["run", "--port", "4000"])
    assert namespace.command == "run"
    assert table.values({"MY_PORT": "2000"}, table.flags(namespace))["port"] == 4000
