"""/metrics stays the same size whatever methods and paths clients make up."""

from __future__ import annotations


def series(client) -> set[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def test_odd_methods_and_paths_do_not_grow_the_metrics(client):
    def flood(count: int, prefix: str) -> None:
        for n in range(count):
            client.open(f"/api/net/{prefix}{n}/{n}", method=f"{prefix}{n}X")
            client.open(f"/{prefix}/{n}", method=f"{prefix}{n}Y")

    flood(10, "W")
    series(client)
    before = series(client)
    flood(2000, "M")
    after = series(client)
    assert after == before
    assert any('method="other"' in line for line in after)
    assert not any("M1999" in line for line in after)
