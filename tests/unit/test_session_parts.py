"""Chat-session parts that need no server: URL policy, memory history, the Redis fallback,
records and their keys, a cut turn's tool calls answered, and reading the bundled model's
constrained answer as it streams."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from llmservice.kernel.errors import InvalidRequest, PermissionDenied
from llmservice.kernel.types import Message, ToolCall
from llmservice.providers.llamacpp.tools import AnswerText
from llmservice.service.sessions.agent import CUT_SHORT, settled
from llmservice.service.sessions.fallback import RETRY_AFTER_S, RedisHealth, RedisOrMemory
from llmservice.service.sessions.history import MemoryHistory, from_a_user_turn
from llmservice.service.sessions.mcp_client import ServerSpec
from llmservice.service.sessions.records import (
    LLMChoice,
    MemoryRecords,
    SecretBox,
    SessionRecord,
    dump,
    load,
    session_key,
)
from llmservice.service.sessions.safety import UrlPolicy


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/",
        "http://[fe80::1]/mcp",
        "http://127.0.0.1:8080/mcp",
        "http://192.168.1.10/mcp",
        "http://[::ffff:10.0.0.1]/mcp",
        "http://0.0.0.0/mcp",
    ],
)
async def test_denied_addresses(url: str) -> None:
    with pytest.raises(PermissionDenied):
        await UrlPolicy([]).check(url)


async def test_the_allow_list_admits_local_hosts_but_never_metadata() -> None:
    policy = UrlPolicy(["127.0.0.1", "10.0.0.0/8", "169.254.0.0/16"])
    await policy.check("http://127.0.0.1:8080/mcp")
    await policy.check("https://10.2.3.4/mcp")
    with pytest.raises(PermissionDenied, match="metadata"):
        await policy.check("http://169.254.169.254/")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/x", "http:///nohost", "not a url"])
async def test_only_http_urls(url: str) -> None:
    with pytest.raises(InvalidRequest):
        await UrlPolicy([]).check(url)


async def test_memory_history_trims_expires_and_starts_at_a_user_turn() -> None:
    now = [0.0]
    history = MemoryHistory(max_messages=4, ttl_s=10, clock=lambda: now[0])
    call = ToolCall("c1", "add", "{}")
    await history.append(
        "u",
        [Message("user", "q1"), Message("assistant", "", (call,)), Message("tool", "2", tool_call_id="c1")],
    )
    await history.append("u", [Message("assistant", "a1"), Message("user", "q2"), Message("assistant", "a2")])
    # Six lines, four kept: the oldest left is a tool result, so reading starts at q2.
    assert [m.content for m in await history.read("u")] == ["q2", "a2"]
    now[0] = 11
    assert await history.read("u") == []


def test_a_trimmed_tool_step_is_not_read() -> None:
    orphan = [Message("tool", "x", tool_call_id="c"), Message("assistant", "a"), Message("user", "q")]
    assert from_a_user_turn(orphan) == [Message("user", "q")]


async def test_the_fallback_uses_memory_while_redis_is_down_and_hands_back() -> None:
    now = [0.0]
    log: list[str] = []

    class Down:
        up = False

        async def op(self) -> str:
            if not self.up:
                raise RedisConnectionError("refused")
            return "redis"

    class Memory:
        async def op(self) -> str:
            return "memory"

    redis_store = Down()

    async def recover(memory: object, redis: object) -> None:
        log.append("handed back")

    health = RedisHealth(clock=lambda: now[0])
    stores = RedisOrMemory(redis_store, Memory(), recover, health)  # type: ignore[arg-type]
    assert await stores.run(lambda s: s.op()) == "memory"
    assert not stores.redis_up
    redis_store.up = True
    assert await stores.run(lambda s: s.op()) == "memory"  # not tried again before the pause
    now[0] = RETRY_AFTER_S + 0.1
    assert await stores.run(lambda s: s.op()) == "redis"
    assert log == ["handed back"]
    assert stores.redis_up


def test_records_keep_secrets_sealed() -> None:
    record = SessionRecord(
        "u", "alice", ServerSpec("http://h/mcp", "sse", "tok-123"), LLMChoice("llamacpp", "m")
    )
    box = SecretBox("key")
    text = dump(record, box)
    assert "tok-123" not in text
    assert load(text, box) == record
    assert record.masked().server.auth_token == "********"
    with pytest.raises(Exception, match="secret_key"):
        load(text, SecretBox("another key"))


async def test_an_outage_is_logged_once_and_its_end_once_for_all_stores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    up = [False]
    handed_back: list[str] = []

    class Redis:
        async def op(self) -> str:
            if not up[0]:
                raise RedisConnectionError("refused")
            return "redis"

    class Memory:
        async def op(self) -> str:
            return "memory"

    def store(name: str) -> RedisOrMemory[Redis | Memory]:
        async def recover(memory: object, redis: object) -> None:
            if not up[0]:
                raise RedisConnectionError("refused")
            handed_back.append(name)

        return RedisOrMemory(Redis(), Memory(), recover, health)

    health = RedisHealth(clock=lambda: now[0])
    history, records = store("history"), store("records")
    caplog.set_level(logging.WARNING, logger="llmservice.service.sessions.fallback")
    for _ in range(3):
        assert await history.run(lambda s: s.op()) == "memory"
        assert await records.run(lambda s: s.op()) == "memory"
        now[0] += RETRY_AFTER_S + 0.1  # each store tries Redis again, and fails again
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["Redis unreachable"]
    up[0] = True
    for _ in range(3):
        assert await history.run(lambda s: s.op()) == "redis"
        assert await records.run(lambda s: s.op()) == "redis"
    assert len(caplog.records) == 2
    assert caplog.records[1].getMessage().startswith("Redis reachable again")
    assert handed_back == ["history", "records"]  # each store handed its own back, once


def test_a_cut_turns_calls_are_each_answered_once() -> None:
    a, b, c = ToolCall("a", "add", "{}"), ToolCall("b", "slow", "{}"), ToolCall("c", "add", "{}")
    added = [
        Message("assistant", "", (a,)),
        Message("tool", "1", tool_call_id="a"),
        Message("assistant", "", (b, c)),
        Message("tool", "2", tool_call_id="c"),  # b was cut while it ran
    ]
    assert settled(added) == [*added, Message("tool", CUT_SHORT, tool_call_id="b")]
    assert settled(added[:2]) == added[:2]  # nothing to answer
    assert settled([Message("assistant", "done")]) == [Message("assistant", "done")]


def test_session_keys_name_the_principal_and_never_collide() -> None:
    assert session_key("alice", "ada") == "alice:ada"
    assert session_key("a:b", "c") != session_key("a", "b:c")
    assert session_key("a:b", "c") == "a%3Ab:c"
    record = SessionRecord("ada", "alice", ServerSpec("http://h/mcp", "sse"), LLMChoice())
    assert record.key == "alice:ada"


async def test_a_principals_places_are_capped_kept_on_reconnect_and_freed() -> None:
    now = [0.0]
    records = MemoryRecords(ttl_s=1000, clock=lambda: now[0])
    spec, llm = ServerSpec("http://h/mcp", "sse"), LLMChoice()
    assert await records.reserve("alice", "u1", cap=2) == "new"
    await records.put(SessionRecord("u1", "alice", spec, llm))
    assert await records.reserve("alice", "u1", cap=2) == "held"
    assert await records.reserve("alice", "u2", cap=2) == "new"
    assert await records.reserve("alice", "u3", cap=2) == "full"
    assert await records.reserve("bob", "u3", cap=2) == "new"  # bob's places are his own
    await records.unreserve("alice", "u1")  # connected: its place stays
    assert await records.reserve("alice", "u3", cap=2) == "full"
    await records.unreserve("alice", "u2")  # its connect failed: given back
    assert await records.reserve("alice", "u3", cap=2) == "new"
    await records.delete("alice", "u1")
    assert await records.reserve("alice", "u4", cap=2) == "new"
    now[0] = 1001  # everything expired, reservations and records alike
    assert await records.get(session_key("alice", "u1")) is None
    assert await records.reserve("alice", "u5", cap=1) == "new"


def fed(pieces: list[str]) -> tuple[list[str], AnswerText]:
    reader = AnswerText()
    return [reader.feed(p) for p in pieces], reader


def test_an_answer_streams_as_it_is_decoded() -> None:
    out, reader = fed(['{"', "content", '": "', "The ", "answer", " is 5", '."', "}"])
    assert out == ["", "", "", "The ", "answer", " is 5", ".", ""]
    assert (reader.kind, reader.closed) == ("content", True)


def test_escapes_are_decoded_even_split_across_pieces() -> None:
    reply = '{ "content" : "a \\"q\\" \\\\ b\\nc \\u00e9 \\ud83d\\ude00 \\/ end" }'
    every_char, reader = fed(list(reply))
    assert "".join(every_char) == 'a "q" \\ b\nc \u00e9 \U0001f600 / end'
    assert reader.closed
    whole, _ = fed([reply])
    assert "".join(whole) == "".join(every_char)
    split = ['{"content": "x\\', "u00", "e9\\ud83d", "\\ude0", '0"}']
    assert fed(split)[0] == ["x", "", "\u00e9", "", "\U0001f600"]


def test_a_tool_call_gives_no_text() -> None:
    out, reader = fed(['{"tool_calls": [{"name": "add", ', '"arguments": {"content": "x"}}]}'])
    assert out == ["", ""]
    assert reader.kind == "tool_calls"


def test_an_answer_cut_short_is_not_closed() -> None:
    out, reader = fed(['{"content": "The ans', "wer"])
    assert "".join(out) == "The answer"
    assert not reader.closed
