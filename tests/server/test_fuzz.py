"""Property-based fuzzing of every route in the server's own /openapi.json (schemathesis), with requests that follow
the schema and requests that break it: whatever the request, the answer is never a 5xx. Derandomized, so a CI run
is repeatable."""

from __future__ import annotations

import signal

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from tests.live_server import Server

pytestmark = pytest.mark.slow  # fuzzing a live server

EXAMPLES_PER_ROUTE = 100


@pytest.fixture(scope="module")
def api(digits_artifact):
    server = Server(digits_artifact, "--threads", "1", "--max-images", "8", "--max-body-mb", "2")
    server.wait_ready()
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output(), server.output()


def fuzz_operation(operation, mode: GenerationMode, calls: dict[str, int]) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def fuzz(case):
        response = case.call(timeout=60)
        calls[mode.value] = calls.get(mode.value, 0) + 1
        case.validate_response(response, checks=[not_a_server_error])

    try:
        fuzz()
    except hypothesis.errors.Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # an operation without parameters or body has nothing to break


def test_no_server_errors(api):
    """Each operation in turn (schemathesis' own pytest plugin needs pytest internals that pytest 9 dropped)."""
    calls: dict[str, int] = {}
    operations = [result.ok() for result in api.get_all_operations()]
    for operation in operations:
        for mode in GenerationMode:  # requests that follow the schema, and requests that break it
            fuzz_operation(operation, mode, calls)
    print(f"\nschemathesis: {sum(calls.values())} requests over {len(operations)} operations ({calls}), no 5xx")
    assert len(operations) >= 10
