"""The retry policy of the MLflow adapter: a busy or unreachable store is retried with exponential back-off for at most
``patience`` seconds (the search's tracking_timeout), a deterministic error is raised at once (many processes logging
at once: tests/e2e/test_mlflow_concurrent_logging.py)."""

from __future__ import annotations

import sqlite3

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from nas_pipeline.mlflow_tracking import TrackingUnavailable, _retry, is_transient
from tests.conftest import Flaky

# ---- the retry policy ------------------------------------------------------------------------


def _wrapped(cause: BaseException, message: str) -> MlflowException:
    """An MlflowException raised while handling ``cause``, the way MLflow's REST client wraps request errors."""
    try:
        try:
            raise cause
        except BaseException:
            raise MlflowException(message)  # noqa: B904  (implicit __context__, as in mlflow.utils.rest_utils)
    except MlflowException as exc:
        return exc


TRANSIENT = {
    "sqlite-locked": MlflowException("(sqlite3.OperationalError) database is locked"),
    "sqlite-busy": MlflowException("database is busy"),
    "temporarily-unavailable-code": RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}),
    "temporarily-unavailable-text": MlflowException("the service is temporarily unavailable"),
    "raw-sqlalchemy-locked": sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
    "http-429": MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 429 != 200"),
    "http-502": MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 502 != 200"),
    "http-503-retries": MlflowException(
        "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool"
        "(host='127.0.0.1', port=5000): Max retries exceeded (Caused by ResponseError('too many 503 error responses'))"
    ),
    "http-504": MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 504 != 200"),
    "requests-connection": requests.exceptions.ConnectionError("Connection refused"),
    "builtin-connection": ConnectionResetError("Connection reset by peer"),
    "timeout": TimeoutError("timed out"),
    "wrapped-connection": _wrapped(requests.exceptions.ConnectionError("boom"), "API request to http://h failed"),
}

DETERMINISTIC = {
    "does-not-exist": RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'abc' not found"}),
    "invalid-parameter": MlflowException("Invalid value for metric", error_code=INVALID_PARAMETER_VALUE),
    "invalid-parameter-mentioning-lock": RestException(
        {"error_code": "INVALID_PARAMETER_VALUE", "message": "param 'note'='database is locked' was already logged"}
    ),
    "missing-table": MlflowException("(sqlite3.OperationalError) no such table: runs", error_code=TEMPORARILY_UNAVAILABLE),
    "plain-mlflow": MlflowException("Run 'abc' not found"),
    "oserror": OSError("database is locked"),
    "training": RuntimeError("CUDA out of memory"),
}


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_is_transient_recognises_a_busy_or_unreachable_store(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_is_transient_rejects_deterministic_errors(error):
    assert not is_transient(error)


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_retry_retries_twice_then_returns(error, sleeps):
    call = Flaky(error, error)
    assert _retry(call) == "done"
    assert call.calls == 3
    assert sleeps == [pytest.approx(0.2), pytest.approx(0.4)]


@pytest.mark.parametrize("error", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_retry_raises_a_deterministic_error_after_one_call(error, sleeps):
    call = Flaky(error, error)
    with pytest.raises(type(error)):
        _retry(call)
    assert call.calls == 1
    assert sleeps == []


def test_retry_backs_off_exponentially_until_its_patience_is_used_up(sleeps):
    call = Flaky(*[MlflowException("database is locked") for _ in range(100)])
    with pytest.raises(TrackingUnavailable, match="unreachable or busy for 30 s") as raised:
        _retry(call, patience=30)
    assert isinstance(raised.value.__cause__, MlflowException), "the store's own error is kept as the cause"
    assert not is_transient(raised.value), "a store down past the bound is not retried again (by a task, say)"
    assert sleeps[:3] == [pytest.approx(0.2), pytest.approx(0.4), pytest.approx(0.8)] and max(sleeps) == pytest.approx(8)
    assert sum(sleeps) == pytest.approx(30), "the whole wait is the patience, no more"
    assert call.calls == len(sleeps) + 1


def test_a_store_that_used_up_its_patience_is_tried_once_by_later_calls(sleeps):
    uri = "http://down.example:5000"
    with pytest.raises(TrackingUnavailable):
        _retry(Flaky(*[requests.exceptions.ConnectionError("refused")] * 50), patience=5, store=uri)
    waited = len(sleeps)
    later = Flaky(requests.exceptions.ConnectionError("refused"))
    with pytest.raises(TrackingUnavailable, match="down.example"):
        _retry(later, patience=5, store=uri)
    assert later.calls == 1 and len(sleeps) == waited, "no second full wait while the search closes its runs"
    assert _retry(lambda: "up", patience=5, store=uri) == "up"
    assert _retry(Flaky(requests.exceptions.ConnectionError("blip")), patience=5, store=uri) == "done", "back: retried again"
