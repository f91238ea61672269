"""Property-based checks of the shim against its own OpenAPI document: no input gives a 5xx.

The service runs in its own process (schemathesis drives it synchronously), in front
of a local OpenAI-speaking upstream so that each generated request answers quickly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case

from ..fakes.openai_server import fake_openai


@pytest.fixture(scope="module")
def shim_url() -> Iterator[str]:
    with fake_openai() as upstream:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmservice",
                "serve",
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--set",
                "provider=openai",
                "--set",
                "openai.api_key=k",
                "--set",
                f"openai.base_url={upstream.url}/v1",
                "--set",
                "openai.model=fake-model",
                "--set",
                "log_level=ERROR",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        try:
            url = ""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (line := proc.stdout.readline()):
                if line.startswith("llmservice: HTTP shim"):
                    url = line.split(" on ", 1)[1].strip()
                if line.startswith("llmservice: ready"):
                    break
            assert url, "serve did not start its HTTP shim"
            yield url
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()


# 40 examples for each of the document's operations: about a minute here, and 155 s on a
# CI host half as fast, past the suite's 120 s per test.
@pytest.mark.timeout(360)
def test_no_request_makes_the_shim_fail(shim_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{shim_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/llmchat/chat"}
    # Connect resolves the host it is given: random host names would send DNS queries
    # off this machine. Its bad input is covered by test_shim_llmchat instead.
    for operation in [op for op in operations if op.path != "/llmchat/connect"]:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Case) -> None:
            response = case.call(base_url=shim_url, timeout=30)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
            if response.status_code >= 400 and "/llmchat/" in case.formatted_path:
                assert isinstance(response.json()["detail"], str)  # the /llmchat document's shape
            elif response.status_code >= 400:
                assert set(response.json()["error"]) >= {"message", "type"}  # OpenAI's error shape, always

        check()
