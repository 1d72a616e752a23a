"""The bearer-token guard on a bare Flask app (the services' own tests use it for real)."""

import pytest
from flask import Flask

from oakestra_net import api_token

TOKEN = "a-long-enough-token-123"


def app_with(token):
    app = Flask(__name__)
    api_token.install_guard(app, token, component="test")
    app.add_url_rule("/api/net/x", "x", lambda: {"ok": True}, methods=["GET", "POST"])
    app.add_url_rule("/healthz", "h", lambda: {"ok": True})
    return app.test_client()


def test_the_guard_answers_401_403_or_lets_through():
    client = app_with(TOKEN)
    assert client.post("/api/net/x").status_code == 401
    assert client.post("/api/net/x", headers={"Authorization": "Basic abc"}).status_code == 401
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert client.post("/api/net/x", headers=wrong).status_code == 403
    right = api_token.auth_header(TOKEN)
    assert client.post("/api/net/x", headers=right).get_json() == {"ok": True}
    assert client.get("/healthz").status_code == 200


def test_without_a_token_everything_is_open():
    assert app_with(None).post("/api/net/x").status_code == 200
    assert api_token.auth_header(None) == {}


@pytest.mark.parametrize("value", ["short", "has a space in it ok", "ümlaut-ümlaut-ümlaut"])
def test_unusable_tokens_are_refused(value):
    with pytest.raises(api_token.TokenError, match="NET_API_TOKEN"):
        api_token.token_from_env({"NET_API_TOKEN": value})


def test_an_empty_variable_means_no_token():
    assert api_token.token_from_env({"NET_API_TOKEN": "  "}) is None
    assert api_token.token_from_env({"NET_API_TOKEN": f" {TOKEN} "}) == TOKEN
