"""Command line: `llmservice serve` runs the service, `llmservice chat` talks to a running one."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc

from .settings import SettingsError, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingsError as exc:
        print(f"llmservice: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmservice", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--config", type=Path, help="TOML settings file (default: ./llm.toml when present)")
    serve.add_argument("--grpc-port", type=int, help="port to listen on; 0 picks a free one and prints it")
    serve.add_argument(
        "--http-port",
        type=int,
        help="the HTTP shim's port (default 8000); 0 picks a free one, -1 runs no shim",
    )
    serve.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set llamacpp.n_ctx=8192 (repeatable)",
    )
    serve.set_defaults(run=_serve)

    shim = commands.add_parser("shim", help="run the HTTP shim alone, in front of a running service")
    shim.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the service")
    shim.add_argument("--host", default="127.0.0.1")
    shim.add_argument("--http-port", type=int, default=8000, help="0 picks a free port and prints it")
    shim.set_defaults(run=_shim)

    chat = commands.add_parser("chat", help="stream a reply from a running service")
    chat.add_argument("prompt")
    chat.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the service")
    chat.add_argument("--system", default="", help="system message")
    chat.add_argument("--model", default="")
    chat.add_argument("--provider", default="")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--max-tokens", type=int, default=0)
    chat.add_argument("--seed", type=int)
    chat.set_defaults(run=_chat)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .app import serve

    overrides = list(args.overrides)
    if args.grpc_port is not None:
        overrides.append(f"server.grpc_port={args.grpc_port}")
    if args.http_port is not None:
        overrides.append(f"server.http_port={args.http_port}")
    settings = load_settings(args.config, overrides)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_event_loop(serve(settings))
    return 0


def _shim(args: argparse.Namespace) -> int:
    import signal

    from gateway_shim.server import running_shim

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with running_shim(args.target, args.host, args.http_port) as port:
            print(f"llmservice: HTTP shim on http://{args.host}:{port} for {args.target}", flush=True)
            await stop.wait()

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_event_loop(run())
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it exists (less CPU per request), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _chat(args: argparse.Namespace) -> int:
    from ._pb.llmservice.v1 import llm_service_pb2 as pb
    from ._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc

    messages = [pb.ChatMessage(role="system", content=args.system)] if args.system else []
    messages.append(pb.ChatMessage(role="user", content=args.prompt))
    request = pb.LLMChatRequest(
        messages=messages,
        model=args.model,
        provider=args.provider,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    with grpc.insecure_channel(args.target) as channel:
        try:
            for chunk in pb_grpc.LLMServiceStub(channel).StreamChat(request):
                if chunk.done:
                    print(
                        f"\n[{chunk.completion_tokens} tokens, {pb.FinishReason.Name(chunk.finish_reason)}]",
                        file=sys.stderr,
                    )
                else:
                    print(chunk.token, end="", flush=True)
        except grpc.RpcError as exc:
            print(f"llmservice chat: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0
