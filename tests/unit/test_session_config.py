"""What a session connect asks for: decoded from the wire once, checked with the fields it names."""

from __future__ import annotations

import pytest

from llmservice._pb.llmservice.v1 import chat_session_pb2 as pb
from llmservice.grpc_api.session_servicer import _llm, _server
from llmservice.kernel.errors import InvalidRequest
from llmservice.service.sessions import LLMChoice, ServerConfig
from llmservice.service.sessions.mcp_client import ServerSpec


def test_an_empty_transport_is_streamable_http_and_the_url_is_trimmed() -> None:
    spec = _server(pb.McpServer(url=" http://mcp.example/mcp ", auth_token="t")).spec()
    assert spec == ServerSpec("http://mcp.example/mcp", "streamable_http", "t")


def test_a_stdio_server_gets_no_token() -> None:
    assert ServerConfig("time", "stdio", "secret").spec() == ServerSpec("time", "stdio", "")


@pytest.mark.parametrize(
    ("server", "field", "message"),
    [
        (
            ServerConfig("http://mcp.example/mcp", "websocket"),
            "server.transport",
            "server.transport: 'websocket' is not one of streamable_http, sse, stdio",
        ),
        (ServerConfig("  "), "server.url", "server.url: is required"),
        (ServerConfig("", "ftp"), "server.transport", None),  # the transport is checked first
    ],
)
def test_a_bad_server_names_its_field(server: ServerConfig, field: str, message: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        server.spec()
    assert caught.value.field == field
    if message is not None:
        assert caught.value.message == message


def test_the_llm_decode_keeps_unset_apart_from_zero() -> None:
    assert _llm(pb.LLMConfig(provider="openai")) == LLMChoice(provider="openai")
    zero = _llm(pb.LLMConfig(model="m", temperature=0.0, seed=0, system_prompt="be brief"))
    assert zero == LLMChoice(model="m", temperature=0.0, seed=0, system_prompt="be brief")
    assert (zero.max_tokens, zero.top_p) == (None, None)
