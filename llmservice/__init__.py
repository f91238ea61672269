"""llmservice: one gRPC service for large language models, in-process or at a provider."""

import os as _os

# gRPC core's fork support runs handlers around every fork() of the process, and the
# service forks whenever a chat session starts a stdio MCP server. With those handlers
# on, about one stdio server in six started from a busy `serve` process had its pipes
# broken at birth (EOF on its stdout before the MCP handshake: a 503 "Connection
# closed"); with them off, none in 30. The service never uses gRPC in a forked child
# (grpc.aio does not support that anyway), so it turns them off before gRPC loads.
# A deployment that sets the variable itself keeps its choice.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
