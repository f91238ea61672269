"""A provider plugin in one file: it serves the published plugin contract
(`protocol.LLMService`: Chat and StreamChat), registers itself with an llmservice
(`llmservice.v1.ProviderRegistryService`), keeps its lease with heartbeats, registers
again when the lease was lost (the service restarted, or the plugin stalled past it), and
deregisters when it stops.

Its "model" repeats the last user message, a word per chunk, each with token signals,
so what reaches a caller through the service can be checked against what it sent:

    python examples/echo_plugin/echo_plugin.py --register 127.0.0.1:50051 --name echo
    grpcurl -plaintext -d '{"provider": "echo", "messages": [{"role": "user", "content": "hi there"}]}' \\
        127.0.0.1:50051 llmservice.v1.LLMService/StreamChat

It uses the Python code generated from `protos/` (the `llmservice._pb` package); a plugin
in another language generates its own from the same files (see docs/plugins.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

import grpc
from grpc_reflection.v1alpha import reflection

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import provider_registry_pb2 as registry_pb
from llmservice._pb.llmservice.v1 import provider_registry_pb2_grpc as registry_grpc
from llmservice._pb.protocol import llm_service_pb2 as protocol_pb
from llmservice._pb.protocol import llm_service_pb2_grpc as protocol_grpc

log = logging.getLogger("echo_plugin")

# The signals every echoed word carries: fixed, so a caller can check they arrived intact.
CONFIDENCE, ENTROPY, TOP_GAP = 0.75, 0.5, 0.5


def reply_words(request: pb.LLMChatRequest) -> tuple[list[str], int]:
    """The words of the reply (capped at max_tokens) and the prompt's length in words."""
    users = [m.content for m in request.messages if m.role == "user"] or [request.user_prompt]
    prompt = " ".join([m.content for m in request.messages] or [request.system_prompt, request.user_prompt])
    words = users[-1].split() or ["(nothing)"]
    if request.max_tokens > 0:
        words = words[: request.max_tokens]
    return words, len(prompt.split())


def signal_for(word: str) -> pb.TokenSignalProto:
    return pb.TokenSignalProto(
        confidence=CONFIDENCE,
        entropy=ENTROPY,
        top_gap=TOP_GAP,
        top_k=[
            pb.TokenCandidateProto(id=1, text=word, prob=CONFIDENCE),
            pb.TokenCandidateProto(id=2, text="...", prob=CONFIDENCE - TOP_GAP),
        ],
    )


class Echo(protocol_grpc.LLMServiceServicer):
    def __init__(self, model: str, delay_s: float) -> None:
        self.model = model
        self.delay_s = delay_s

    async def Chat(self, request: pb.LLMChatRequest, context: grpc.aio.ServicerContext) -> pb.LLMChatResponse:
        words, prompt_tokens = reply_words(request)
        return pb.LLMChatResponse(
            content=" ".join(words),
            model=request.model or self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words),
            total_tokens=prompt_tokens + len(words),
        )

    async def StreamChat(self, request: pb.LLMChatRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        words, prompt_tokens = reply_words(request)
        model = request.model or self.model
        for i, word in enumerate(words):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield pb.LLMChatChunk(token=word if i == 0 else f" {word}", model=model, signal=signal_for(word))
        yield pb.LLMChatChunk(
            done=True,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words),
            total_tokens=prompt_tokens + len(words),
            finish_reason=pb.FINISH_REASON_STOP,
        )


class Refused(Exception):
    """The service refused the registration for good (a bad key, name or target)."""


class Registration:
    """The plugin's lease at the service: registered, renewed, registered again when lost."""

    def __init__(self, service: str, request: registry_pb.RegisterProviderRequest, admin_key: str) -> None:
        self._channel = grpc.aio.insecure_channel(service)
        self._stub = registry_grpc.ProviderRegistryServiceStub(self._channel)
        self._request = request
        self._metadata = (("authorization", f"Bearer {admin_key}"),) if admin_key else ()
        self._lease_id = ""
        self.registered = asyncio.Event()

    async def keep(self) -> None:
        """Register, then renew at a third of the lease until cancelled; a lost lease (NOT_FOUND)
        or an unreachable service is registered again, retried every second."""
        period = 1.0
        while True:
            try:
                if not self._lease_id:
                    reply = await self._stub.RegisterProvider(
                        self._request, metadata=self._metadata, timeout=10
                    )
                    self._lease_id, period = reply.lease_id, reply.lease_s / 3
                    print(
                        f"echo_plugin: registered as {reply.provider.name} (lease {reply.lease_s:g}s)",
                        flush=True,
                    )
                    self.registered.set()
                else:
                    await self._stub.RenewLease(
                        registry_pb.RenewLeaseRequest(lease_id=self._lease_id),
                        metadata=self._metadata,
                        timeout=5,
                    )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.ALREADY_EXISTS,
                ):
                    raise Refused(f"{exc.code().name}: {exc.details()}") from None
                log.warning("registry: %s: %s; registering again", exc.code().name, exc.details())
                self._lease_id, period = "", 1.0
            await asyncio.sleep(period)

    async def close(self) -> None:
        if self._lease_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._stub.DeregisterProvider(
                    registry_pb.DeregisterProviderRequest(lease_id=self._lease_id),
                    metadata=self._metadata,
                    timeout=5,
                )
        await self._channel.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (0: a free one)")
    parser.add_argument("--register", default="", help="host:port of the llmservice to register with")
    parser.add_argument("--name", default="echo", help="the provider name requests will use")
    parser.add_argument("--model", default="echo-1", help="the model it serves")
    parser.add_argument(
        "--lease-s", type=float, default=0, help="lease to ask for (0: the service's default)"
    )
    parser.add_argument("--delay-ms", type=float, default=0, help="pause before each word")
    parser.add_argument(
        "--admin-key-env",
        default="ECHO_PLUGIN_ADMIN_KEY",
        help="variable holding the service's admin key, if any",
    )
    args = parser.parse_args(argv)

    server = grpc.aio.server()
    protocol_grpc.add_LLMServiceServicer_to_server(Echo(args.model, args.delay_ms / 1000), server)
    name = protocol_pb.DESCRIPTOR.services_by_name["LLMService"].full_name
    reflection.enable_server_reflection([name, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    target = f"{args.host}:{port}"
    print(f"echo_plugin: serving on {target}", flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    registration = keeping = None
    if args.register:
        request = registry_pb.RegisterProviderRequest(
            name=args.name, target=target, models=[args.model], lease_s=args.lease_s
        )
        registration = Registration(args.register, request, os.environ.get(args.admin_key_env, ""))
        keeping = asyncio.create_task(registration.keep())
    waiting = [asyncio.create_task(stopping.wait()), *([keeping] if keeping else [])]
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if keeping is not None and keeping in done:
        print(f"echo_plugin: registration refused: {keeping.exception()}", flush=True)
        code = 2
    for task in waiting:
        task.cancel()
    if registration is not None:
        await registration.close()
    await server.stop(5)
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="echo_plugin: %(message)s")
    sys.exit(asyncio.run(main(sys.argv[1:])))
