"""Regression: stdio MCP servers started by a busy `serve` process had broken pipes.

With gRPC core's fork handlers on, about one stdio server in six started from a `serve`
process saw EOF on its stdout before the MCP handshake (a 503 "Connection closed" at
connect). The service turns those handlers off before gRPC loads; the two-worker stdio
test in tests/integration/test_sessions_workers.py exercises the real path.
"""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_service_process_runs_with_grpc_fork_handlers_off() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    probe = "import llmservice.cli, os; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "false"


def test_an_operator_setting_wins() -> None:
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "true"}
    probe = "import llmservice, os; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "true"
