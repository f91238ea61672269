"""HTTP plumbing shared by every remote backend.

One httpx client per backend, on aiohttp's connection pool (`aiohttp_transport`),
proxies from HTTPS_PROXY / NO_PROXY through `trust_env`; upstream error bodies turned
into domain errors, and transport failures told apart: a timeout is
DEADLINE_EXCEEDED (a connect timeout a retryable `ProviderTimeout`), anything else
UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx

from llmservice.kernel.errors import DeadlineExceeded, ProviderTimeout, Unavailable
from llmservice.providers.remote.aiohttp_transport import AiohttpClient
from llmservice.providers.remote.http_errors import from_status, redact
from llmservice.providers.remote.settings import RemoteSettings


def make_client(
    settings: RemoteSettings, *, base_url: str = "", headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=settings.max_concurrency)
    return AiohttpClient(timeout=timeout, limits=limits, trust_env=True, base_url=base_url, headers=headers)


async def raise_for_status(
    response: httpx.Response, provider: str, *, model: str, secrets: Iterable[str] = ()
) -> None:
    """Raise the domain error for a 4xx or 5xx answer, with the upstream's own message."""
    if response.status_code < 400:
        return
    await response.aread()
    message = error_message(response.content) or response.reason_phrase
    raise from_status(provider, response.status_code, message, response.headers, model=model, secrets=secrets)


def error_message(body: bytes) -> str:
    """The message in an error body, whichever common shape it has."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])  # OpenAI, Anthropic
        if isinstance(error, str):
            return error  # Ollama
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message", ""))  # watsonx
        if isinstance(data.get("message"), str):
            return str(data["message"])  # AWS
    return body.decode(errors="replace")[:500]


@contextlib.contextmanager
def unreadable(provider: str, what: str = "a reply") -> Iterator[None]:
    """Upstream data that is not the JSON expected (bad syntax, wrong shape) as UNAVAILABLE:
    the provider's fault, not an internal error."""
    try:
        yield
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise Unavailable(f"provider {provider} sent {what} that could not be read") from None


@contextlib.asynccontextmanager
async def transport_errors(provider: str, secrets: Iterable[str] = ()) -> AsyncIterator[None]:
    """Map httpx's transport failures inside the block to domain errors."""
    try:
        yield
    except httpx.ConnectTimeout:
        raise ProviderTimeout(f"provider {provider} did not accept a connection in time") from None
    except httpx.TimeoutException:
        raise DeadlineExceeded(f"provider {provider} did not answer in time") from None
    except httpx.TransportError as exc:
        detail = redact(str(exc) or type(exc).__name__, secrets)
        raise Unavailable(f"provider {provider} is unreachable or cut the connection: {detail}") from None
