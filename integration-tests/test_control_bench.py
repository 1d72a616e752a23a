"""The control-plane benchmark still runs end to end (tiny counts, both kinds of store:
the embedded one and a MongoDB-wire server given by URL, here a SecantusDB)."""

from __future__ import annotations

import pytest
from pymongo import MongoClient

from testbed import control_bench

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROWS = (
    "root deploys",
    "subnet allocations",
    "CPU s per 1,000 cached queries at 10 services",
    "CPU s per 1,000 cached queries at 30 services",
    "cached table queries by name",
    "cached table queries by service IP",
    "queries forwarded to the root",
    "scale change fan-out",
)


def test_quick_bench_prints_every_row_for_both_stores(capsys, tmp_path):
    with control_bench.secantus(tmp_path) as url:
        left_over = MongoClient(url)
        stale = {"job_name": "from.an.earlier.run"}
        left_over["oakestra_bench_root"]["jobs"].insert_one(dict(stale))
        left_over["keep_me"]["things"].insert_one({"x": 1})
        # --store secantus would run a second server the same way (only retryWrites differs,
        # see test_each_component_gets_its_own_database_with_the_servers_options): not twice here
        assert control_bench.main(["--quick", "--store", "embedded", "--mongo-url", url]) == 0
        assert left_over["oakestra_bench_root"]["jobs"].count_documents(stale) == 0
        assert left_over["keep_me"]["things"].count_documents({}) == 1  # not the bench's
        left_over.close()
    table = capsys.readouterr().out
    for store in ("embedded", "MongoDB at 127.0.0.1"):
        section = table.split(f"store: {store}")[1].split("== ")[0]
        lines = section.strip().splitlines()
        for row in ROWS:
            assert any(line.startswith(row) for line in lines), (store, row, section)
        fan_out = next(line for line in lines if line.startswith("scale change fan-out"))
        assert "1.0 announcements per change" in fan_out, fan_out
    server = table.split("store: MongoDB at 127.0.0.1")[1]
    assert "store ops each" in server
    shared = "cached table queries by name (30 services, 20 nodes, 2 cluster processes)"
    assert shared in server, table


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("mongodb://db.example:27017", "mongodb://db.example:27017/"),
        ("mongodb://u:p@db.example/", "mongodb://u:p@db.example/?authSource=admin"),
        ("mongodb://u:p@h/?authSource=ops&tls=true", "mongodb://u:p@h/?authSource=ops&tls=true"),
    ],
)
def test_a_server_url_becomes_the_stacks_base(given, base):
    assert control_bench.server_url(given) == base


def test_each_component_gets_its_own_database_with_the_servers_options():
    server = control_bench.server_url("mongodb://u:p@db.example/?tls=true")
    assert (
        control_bench.database_url(server, "oakestra_bench_root", retry_writes=True)
        == "mongodb://u:p@db.example/oakestra_bench_root?tls=true&authSource=admin"
    )
    assert control_bench.database_url("mongodb://h:1/", "x", retry_writes=False) == (
        "mongodb://h:1/x?retryWrites=false"
    )


@pytest.mark.parametrize(
    "given",
    ["http://db.example/", "mongodb:///", "mongodb://db.example/mydb", "mongodb://h/#x"],
)
def test_a_server_url_with_a_database_is_refused(given, capsys):
    with pytest.raises(SystemExit) as exited:
        control_bench.main(["--quick", "--store", "embedded", "--mongo-url", given])
    assert exited.value.code == 2
    assert "--mongo-url" in capsys.readouterr().err
