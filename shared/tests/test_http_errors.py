"""One error type and one handler: what a client of any of our Flask apps gets back."""

from __future__ import annotations

from flask import Flask

from oakestra_net.http_errors import ApiError, register_json_errors
from oakestra_net.validation import InvalidInput


class Refused(ApiError):
    label = "refused"


def app_raising(error: Exception) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def fail():
        raise error

    register_json_errors(app)
    return app


def answer(error: Exception) -> tuple[int, dict]:
    response = app_raising(error).test_client().get("/")
    return response.status_code, response.get_json()


def test_an_api_error_answers_its_status_phrase_and_reason():
    assert answer(ApiError(409, "taken")) == (409, {"error": "Conflict", "reason": "taken"})


def test_an_api_error_naming_a_field_says_which():
    status, body = answer(ApiError(400, "too long", field="job_name"))
    assert (status, body["field"], body["reason"]) == (400, "job_name", "too long")


def test_a_labelled_api_error_keeps_its_own_error_word():
    status, body = answer(Refused(503, "not registered"))
    assert (status, body) == (503, {"error": "refused", "reason": "not registered"})


def test_invalid_input_and_unexpected_errors_stay_json():
    status, body = answer(InvalidInput("cluster_id", "missing"))
    assert status == 400 and body["field"] == "cluster_id"
    status, body = answer(RuntimeError("boom"))
    assert status == 500 and body["error"] == "Internal Server Error"
