"""Log formats, redaction, request ids, and tracing off costing no import."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from llmservice.kernel import context
from llmservice.observability import tracing_for
from llmservice.observability.logs import PAYLOADS, RequestIdFilter, enable_payloads, formatter, secrets_of
from llmservice.observability.settings import TracingSettings
from llmservice.providers.openai_family.settings import OpenAISettings
from llmservice.service.settings import CacheSettings, Settings

KEY = "sk-unit-REDACT-ME-0123456789"


@pytest.fixture(autouse=True)
def no_request_left_behind() -> Iterator[None]:
    """Each test's context.begin() is undone: later tests' tasks would inherit its headers."""
    ids, outgoing = context.REQUEST_ID.set(""), context.OUTGOING.set(())
    yield
    context.REQUEST_ID.reset(ids)
    context.OUTGOING.reset(outgoing)


def test_upstream_calls_carry_only_request_ids_in_uuid_form() -> None:
    context.begin("req-1", ("traceparent", "00-abc-def-01"))
    assert context.upstream_headers() == (("traceparent", "00-abc-def-01"),)
    made = context.request_id_from(None)
    context.begin(made)
    assert context.upstream_headers() == (("x-request-id", made),)


def record(message: str, *args: object) -> logging.LogRecord:
    made = logging.LogRecord("llmservice.test", logging.WARNING, __file__, 1, message, args, None)
    RequestIdFilter().filter(made)
    return made


def test_json_lines_carry_the_request_id_and_mask_every_secret() -> None:
    context.begin("req-7")
    line = formatter("json", [KEY]).format(record("upstream said %s", f"bad key {KEY[:-3]}..."))
    data = json.loads(line)
    assert data["request_id"] == "req-7"
    assert data["level"] == "WARNING"
    assert KEY[:8] not in line
    assert "***" in data["msg"]


def test_key_value_lines_quote_what_needs_it() -> None:
    context.begin("req-8")
    line = formatter("kv", []).format(record('a "quoted" message'))
    assert "request_id=req-8" in line
    assert 'msg="a \\"quoted\\" message"' in line


def test_text_lines_show_the_request_id_only_inside_a_request() -> None:
    context.REQUEST_ID.set("")
    assert "[" not in formatter("text", []).format(record("outside"))
    context.begin("req-9")
    assert "[req-9]" in formatter("text", []).format(record("inside"))


def test_secrets_of_finds_keys_and_url_passwords() -> None:
    settings = Settings(
        openai=OpenAISettings(api_key=SecretStr(KEY)),
        cache=CacheSettings(type="redis", redis_url="redis://user:hunter2pass@127.0.0.1:6379/0"),
    )
    assert {KEY, "hunter2pass"} <= set(secrets_of(settings))


def test_payloads_are_not_logged_unless_asked() -> None:
    assert not PAYLOADS.isEnabledFor(logging.DEBUG)
    enable_payloads(True)
    try:
        assert PAYLOADS.isEnabledFor(logging.DEBUG)
    finally:
        enable_payloads(False)


def test_request_ids_from_callers_are_kept_only_when_plain() -> None:
    assert context.request_id_from("abc-123_X.y:z") == "abc-123_X.y:z"
    for bad in ("", None, "a b", "x" * 129, "line\nbreak", "é"):
        made = context.request_id_from(bad)
        assert made != bad
        assert len(made) == 32


def test_tracing_off_imports_no_tracing_code() -> None:
    assert tracing_for(TracingSettings()) is None
    assert tracing_for(TracingSettings(exporter="otlp", sdk_disabled=True)) is None
    code = (
        "import sys\n"
        "import llmservice.app, llmservice.rest.app\n"
        "from llmservice.observability import tracing_for\n"
        "from llmservice.service.settings import TracingSettings\n"
        "assert tracing_for(TracingSettings()) is None\n"
        # (redis-py loads the SDK's metrics part by itself when the SDK is installed)
        "tracing = ('opentelemetry.sdk.trace', 'opentelemetry.exporter', 'llmservice.observability.trac')\n"
        "loaded = [m for m in sys.modules if m.startswith(tracing)]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_spans_go_to_the_otlp_endpoint_with_the_configured_headers() -> None:
    """Exported over OTLP/HTTP to a local receiver: endpoint + /v1/traces, headers decoded."""
    seen: list[tuple[str, str]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append((self.path, self.headers["authorization"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        settings = TracingSettings(
            exporter="otlp",
            endpoint=f"http://127.0.0.1:{receiver.server_port}/",
            headers=SecretStr("authorization=Bearer%20t0ken,x-other=1"),
        )
        tracing = tracing_for(settings)
        assert tracing is not None
        with tracing.span("probe", {}, {}, SpanKind.INTERNAL):
            pass
        tracing.shutdown()  # flushes the batch
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert seen == [("/v1/traces", "Bearer t0ken")]
