"""The legacy Completions API on the shim (POST /v1/completions): a raw prompt continued as it
is, with no chat template. Through the official openai client and litellm, on the bundled
model; and on remote upstreams (a fake OpenAI, whose /v1/completions it reaches, and a fake
Anthropic, which has no raw completion)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from llmservice.kernel.types import ChatRequest, SignalOptions, StreamEnd, TokenDelta
from llmservice.providers.openai_family.provider import azure_openai_provider
from llmservice.providers.openai_family.settings import AzureOpenAISettings

from ..fakes.anthropic_server import fake_anthropic
from ..fakes.openai_server import Reply, fake_openai
from ..fakes.upstream import Upstream
from .conftest import Service, eventually, shim_in_front_of

FRANCE = "The capital of France is"
COUNTING = "1, 2, 3, 4,"  # continued for as long as it is let: the model never ends it itself


def _counts(usage: Any) -> tuple[int, int, int]:
    """Usage without its cached tokens, which depend on what ran before."""
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


async def test_a_raw_prompt_is_continued_with_no_chat_template(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=4)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    [choice] = reply.choices
    assert choice.text.startswith(" Paris")  # the sentence goes on; a chat reply would begin anew
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "length", None)
    chat = await client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": FRANCE}],
        max_tokens=1,
    )
    assert reply.usage is not None
    assert chat.usage is not None
    assert reply.usage.prompt_tokens < chat.usage.prompt_tokens  # no template around the prompt
    assert reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


async def test_the_default_max_tokens_is_openais_16(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="", prompt=COUNTING, temperature=0)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


async def test_streamed_and_whole_agree_at_temperature_zero(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=8)
    stream = await client.completions.create(
        model="",
        prompt=FRANCE,
        temperature=0,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].choices == []
    assert _counts(chunks[-1].usage) == _counts(whole.usage)
    assert all(c.usage is None for c in chunks[:-1])


async def test_a_list_of_prompts_gives_n_choices_for_each_in_order(client: openai.AsyncOpenAI) -> None:
    prompts = [FRANCE, COUNTING]
    singles = [
        await client.completions.create(model="", prompt=p, temperature=0, max_tokens=4) for p in prompts
    ]
    reply = await client.completions.create(model="", prompt=prompts, n=2, temperature=0, max_tokens=4)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]  # prompt_index * n + i
    expected = [s.choices[0].text for s in singles for _ in range(2)]
    assert [c.text for c in reply.choices] == expected
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)  # once each
    assert reply.usage.completion_tokens == 4 * 4

    stream = await client.completions.create(
        model="",
        prompt=prompts,
        n=2,
        temperature=0,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    finished: list[int] = []
    usage = None
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished.append(c.index)
        usage = chunk.usage or usage
    assert [texts[i] for i in range(4)] == expected
    assert sorted(finished) == [0, 1, 2, 3]
    assert _counts(usage) == _counts(reply.usage)


async def test_n_choices_with_a_seed_sample_apart_and_again_alike(client: openai.AsyncOpenAI) -> None:
    async def texts() -> list[str]:
        reply = await client.completions.create(
            model="", prompt="Once upon a time", n=3, seed=7, temperature=1.5, max_tokens=8
        )
        return [c.text for c in reply.choices]

    first = await texts()
    assert len(set(first)) > 1  # seed + i per choice
    assert await texts() == first


async def test_echo_puts_the_prompt_before_the_continuation(client: openai.AsyncOpenAI) -> None:
    plain = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=4)
    echoed = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=4, echo=True)
    assert echoed.choices[0].text == FRANCE + plain.choices[0].text
    assert _counts(echoed.usage) == _counts(plain.usage)
    stream = await client.completions.create(
        model="", prompt=[FRANCE, COUNTING], temperature=0, max_tokens=4, echo=True, stream=True
    )
    texts: dict[int, str] = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts[0] == echoed.choices[0].text
    assert texts[1].startswith(COUNTING)


def _check_legacy_logprobs(logprobs: Any, text: str, top: int) -> None:
    assert logprobs is not None
    tokens, values, tops, offsets = (
        logprobs.tokens,
        logprobs.token_logprobs,
        logprobs.top_logprobs,
        logprobs.text_offset,
    )
    assert len(tokens) == len(values) == len(tops) == len(offsets) > 0
    assert "".join(tokens) == text
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    for token, value, alternatives in zip(tokens, values, tops, strict=True):
        assert value <= 0
        assert token in alternatives  # the chosen token always, with up to `top` likeliest
        assert len(alternatives) <= top + 1
        assert alternatives[token] == value


async def test_logprobs_come_in_the_legacy_shape(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=6, logprobs=2)
    choice = reply.choices[0]
    _check_legacy_logprobs(choice.logprobs, choice.text, 2)
    assert choice.logprobs is not None
    assert choice.logprobs.top_logprobs is not None
    for alternatives in choice.logprobs.top_logprobs:
        assert len(alternatives) == 2  # at temperature 0 the chosen token is the likeliest of them
    assert choice.logprobs.token_logprobs is not None
    assert all(
        v == max(a.values())
        for v, a in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs, strict=True)
    )
    assert choice.logprobs.tokens is not None
    assert choice.logprobs.tokens[0] == " Paris"
    assert choice.logprobs.token_logprobs[0] > math.log(0.5)

    stream = await client.completions.create(
        model="", prompt=FRANCE, temperature=0, max_tokens=6, logprobs=2, stream=True
    )
    pieces = [c.choices[0] async for c in stream if c.choices]
    texts = [p for p in pieces if p.text]
    assert all(p.logprobs is not None and p.logprobs.tokens == [p.text] for p in texts)
    assert pieces[-1].logprobs is None  # the last piece only says why it ended
    streamed = [p.logprobs for p in texts if p.logprobs]
    assert [o for lp in streamed for o in lp.text_offset or ()] == choice.logprobs.text_offset
    assert [v for lp in streamed for v in lp.token_logprobs or ()] == pytest.approx(
        choice.logprobs.token_logprobs
    )


async def test_logprobs_zero_gives_the_chosen_tokens_only(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=3, logprobs=0)
    logprobs = reply.choices[0].logprobs
    _check_legacy_logprobs(logprobs, reply.choices[0].text, 0)
    assert logprobs is not None
    assert logprobs.top_logprobs is not None
    assert [len(a) for a in logprobs.top_logprobs] == [1, 1, 1]


async def test_a_stop_sequence_ends_the_text_before_it(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="", prompt=FRANCE, temperature=0, max_tokens=8, stop=["."])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (" Paris", "stop")
    stream = await client.completions.create(
        model="", prompt=FRANCE, temperature=0, max_tokens=8, stop=".", stream=True
    )
    chunks = [c.choices[0] async for c in stream if c.choices]
    assert "".join(c.text for c in chunks) == " Paris"
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": " and that is all."}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"n": 2, "best_of": 1}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 6}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 17}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"extra_body": {"wat": 1}}, "wat"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3]]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["fine", ""]}, "prompt[1]"),
        ({"prompt": ["p"] * 65, "n": 2}, "n"),
        ({"extra_headers": {"x-priority": "urgent"}}, "x-priority"),
    ],
)
async def test_what_is_not_honoured_is_a_400_naming_it(
    client: openai.AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    args: dict[str, Any] = {"model": "", "prompt": FRANCE, "max_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        await client.completions.create(**args)
    assert raised.value.param == param
    if param == "suffix":
        assert "insertion is not supported" in raised.value.message


async def test_best_of_equal_to_n_is_accepted(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="", prompt=FRANCE, n=2, best_of=2, max_tokens=2)
    assert len(reply.choices) == 2


async def test_an_unknown_model_fails_before_any_stream_byte(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.completions.create(model="no-such-model", prompt=FRANCE, stream=True)
    assert raised.value.param == "model"


async def test_a_client_that_disconnects_stops_generation(base_url: str, service: Service) -> None:
    body = {"prompt": [COUNTING, COUNTING], "max_tokens": 400, "stream": True}
    before = service.tokens_generated
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{base_url}/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_lines():
            break
    assert await _spent_once_stopped(service, before) < 400


@pytest.mark.parametrize("extra", [{}, {"logprobs": 1}], ids=["whole", "logprobs"])
async def test_a_non_streaming_client_that_disconnects_stops_generation(
    base_url: str, service: Service, extra: dict[str, Any]
) -> None:
    body = {"prompt": [COUNTING, COUNTING], "max_tokens": 1000, **extra}
    before = service.tokens_generated
    async with httpx.AsyncClient(timeout=60) as http:
        task = asyncio.create_task(http.post(f"{base_url}/completions", json=body))
        await eventually(lambda: service.tokens_generated > before + 5)
        task.cancel()  # the client gives up: httpx closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await _spent_once_stopped(service, before) < 1000


async def _spent_once_stopped(service: Service, before: int) -> int:
    await eventually(lambda: service.engine.held_sequences == 0, timeout_s=60)
    return service.tokens_generated - before


async def test_the_route_is_in_the_openapi_document(base_url: str) -> None:
    async with httpx.AsyncClient() as http:
        doc = (await http.get(base_url.removesuffix("/v1") + "/openapi.json")).json()
    operation = doc["paths"]["/v1/completions"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "max_tokens", "echo", "logprobs", "stream_options"} <= set(schema["properties"])
    assert "$defs" not in schema
    assert "#/$defs/" not in str(schema)


# What litellm's own modules warn about as it loads them, lazily, during the call, is not ours.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
async def test_litellm_text_completion_reaches_the_raw_completion(
    client: openai.AsyncOpenAI, base_url: str, service: Service, loopback_only: list[str], litellm: Any
) -> None:
    model = service.engine.default_model
    expected = await client.completions.create(model=model, prompt=FRANCE, temperature=0, max_tokens=6)
    reply = await litellm.atext_completion(
        model=f"openai/{model}",
        api_base=base_url,
        api_key="unused",
        prompt=FRANCE,
        temperature=0,
        max_tokens=6,
    )
    # The same text as the raw completion: litellm did not turn the prompt into a chat turn.
    assert reply.choices[0].text == expected.choices[0].text
    assert reply.choices[0].text.startswith(" Paris")
    assert loopback_only == []


# The remote providers: a fake OpenAI upstream (raw prompts go to its /v1/completions) and a
# fake Anthropic one (no raw completion), behind one service.


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with fake_openai(Reply(text="one two three")) as fake:
        yield fake


@contextlib.asynccontextmanager
async def shim_client(settings: dict[str, Any]) -> AsyncIterator[openai.AsyncOpenAI]:
    """An openai client of a shim in front of a service with these settings."""
    async with (
        shim_in_front_of(settings) as root,
        openai.AsyncOpenAI(api_key="unused", base_url=root + "/v1", max_retries=0) as client,
    ):
        yield client


@pytest.fixture(scope="module")
async def remote(upstream: Upstream) -> AsyncIterator[openai.AsyncOpenAI]:
    openai_settings = {"api_key": "k", "base_url": upstream.url + "/v1", "model": "fake-model"}
    async with shim_client({"provider": "openai", "openai": openai_settings}) as client:
        yield client


PROMPT = "Once upon a time\n\tthere was"  # as it is: whitespace and all


async def test_a_remote_whole_completion_goes_to_the_upstreams_completions(
    remote: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    reply = await remote.completions.create(
        model="fake-model", prompt=PROMPT, max_tokens=5, temperature=0.5, stop=["END"], seed=3
    )
    assert reply.choices[0].text == "one two three"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 3)
    assert upstream.paths[-1] == "/v1/completions"
    sent = upstream.requests[-1]
    assert sent["prompt"] == PROMPT
    assert "messages" not in sent
    assert {k: sent[k] for k in ("model", "max_tokens", "temperature", "stop", "seed", "stream")} == {
        "model": "fake-model",
        "max_tokens": 5,
        "temperature": 0.5,
        "stop": ["END"],
        "seed": 3,
        "stream": False,
    }


async def test_a_remote_streamed_completion_goes_to_the_upstreams_completions(
    remote: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    stream = await remote.completions.create(
        model="fake-model",
        prompt=[PROMPT, "second"],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
        usage = chunk.usage or usage
    assert texts == {0: "one two three", 1: "one two three"}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 6)  # 5 + 5 prompt, 3 + 3 completion
    sent = upstream.requests[-2:]
    assert upstream.paths[-2:] == ["/v1/completions"] * 2
    assert sorted(s["prompt"] for s in sent) == sorted([PROMPT, "second"])
    assert all(s["stream"] and s["stream_options"] == {"include_usage": True} for s in sent)


async def test_remote_logprobs_come_from_the_upstreams_legacy_logprobs(
    remote: openai.AsyncOpenAI, upstream: Upstream
) -> None:
    reply = await remote.completions.create(model="fake-model", prompt=PROMPT, max_tokens=5, logprobs=2)
    assert upstream.requests[-1]["logprobs"] == 2
    logprobs = reply.choices[0].logprobs
    _check_legacy_logprobs(logprobs, "one two three", 2)
    assert logprobs is not None
    assert logprobs.tokens == ["one ", "two ", "three"]
    assert logprobs.token_logprobs == pytest.approx([math.log(0.8)] * 3)
    assert logprobs.top_logprobs is not None
    assert logprobs.top_logprobs[0] == pytest.approx({"one ": math.log(0.8), "alt0": math.log(0.1)})


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
async def test_litellm_text_completion_on_a_remote_provider(
    remote: openai.AsyncOpenAI, upstream: Upstream, litellm: Any
) -> None:
    reply = await litellm.atext_completion(
        model="openai/fake-model",
        api_base=str(remote.base_url),
        api_key="unused",
        prompt=PROMPT,
        max_tokens=5,
    )
    assert reply.choices[0].text == "one two three"
    assert upstream.paths[-1] == "/v1/completions"
    assert upstream.requests[-1]["prompt"] == PROMPT


async def test_a_provider_with_no_raw_completion_is_a_400_naming_the_prompt() -> None:
    with fake_anthropic() as anthropic_up:
        settings = {"api_key": "k", "base_url": anthropic_up.url, "model": "claude-fake"}
        async with shim_client({"provider": "anthropic", "anthropic": settings}) as client:
            for stream in (False, True):
                with pytest.raises(openai.BadRequestError) as raised:
                    await client.completions.create(model="", prompt=PROMPT, max_tokens=5, stream=stream)
                assert raised.value.param == "prompt"
                assert "provider anthropic has no raw completion" in raised.value.message
    assert anthropic_up.requests == []  # refused before anything was sent


async def test_azure_continues_a_raw_prompt_at_its_deployments_completions() -> None:
    request = ChatRequest((), raw_prompt=PROMPT, signals=SignalOptions(top_k=1))
    with fake_openai(Reply(text="one two")) as fake:
        settings = AzureOpenAISettings(api_key=SecretStr("k"), endpoint=fake.url, deployment="gpt-eu")
        async with azure_openai_provider(settings) as provider:
            whole = await provider.complete("gpt-eu", request)
            events = [e async for e in provider.stream("gpt-eu", request)]
    assert whole.text == "one two"
    assert "".join(e.text for e in events if isinstance(e, TokenDelta)) == "one two"
    assert all(e.signal is not None for e in events if isinstance(e, TokenDelta))
    assert isinstance(events[-1], StreamEnd)
    assert fake.paths == ["/openai/deployments/gpt-eu/completions"] * 2
    assert [r["prompt"] for r in fake.requests] == [PROMPT, PROMPT]
    assert fake.requests[1]["logprobs"] == 1
