"""Property-based fuzzing of every route in the server's own /openapi.json (schemathesis): whatever the generated
request, the answer is never a 5xx. Derandomized, so a CI run is repeatable."""

from __future__ import annotations

import signal

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from tests.live_server import Server

EXAMPLES_PER_ROUTE = 100


@pytest.fixture(scope="module")
def api(digits_artifact):
    server = Server(digits_artifact, "--threads", "1", "--max-images", "8", "--max-body-mb", "2")
    server.wait_ready()
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output(), server.output()


def test_no_server_errors(api):
    """Each operation in turn (schemathesis' own pytest plugin needs pytest internals that pytest 9 dropped)."""
    calls: dict[str, int] = {}
    for result in api.get_all_operations():
        operation = result.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def fuzz(case):
            response = case.call(timeout=60)
            calls[operation.label] = calls.get(operation.label, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    print(f"\nschemathesis: {sum(calls.values())} requests over {len(calls)} operations, no 5xx")
    assert len(calls) >= 10
