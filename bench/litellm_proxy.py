"""The LiteLLM proxy for side-by-side benchmarks, in a venv of its own outside the repo.

`litellm[proxy]` is a bench-only dependency with a large tree of its own pins, so it
never enters the project's environment: the first use creates the venv (about two
minutes) under ~/.cache/llmservice/bench/.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .llama_server import CACHE

VERSION = "1.106.2"
VENV = CACHE / f"litellm-{VERSION}"


def python() -> Path:
    """The venv's interpreter, with litellm[proxy] installed."""
    interpreter = VENV / "bin" / "python"
    if (
        not interpreter.exists()
        or subprocess.run(
            [str(interpreter), "-c", "import litellm.proxy.proxy_cli"], capture_output=True
        ).returncode
    ):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(interpreter), "-m", "pip", "install", "--quiet", f"litellm[proxy]=={VERSION}"], check=True
        )
    return interpreter


@contextlib.contextmanager
def litellm_running(upstream: str, port: int) -> Iterator[str]:
    """The proxy on `port`, serving model `fixed` from the OpenAI-compatible `upstream`; its /v1 URL."""
    config = VENV / f"config-{port}.yaml"
    interpreter = python()
    config.write_text(
        "model_list:\n"
        "  - model_name: fixed\n"
        "    litellm_params:\n"
        "      model: openai/fixed\n"
        f"      api_base: {upstream}\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the internet
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "127.0.0.1,localhost",
        # No keys on either side: the shim runs in open local mode too.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    argv = [
        str(interpreter),
        "-m",
        "litellm.proxy.proxy_cli",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError("the LiteLLM proxy exited before it was ready")
            time.sleep(0.5)
        else:
            raise RuntimeError("the LiteLLM proxy did not become ready")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)
