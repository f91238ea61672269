"""A plugin built from the published contract table alone works unchanged.

The client is generated here from the published table in docs/ARCHITECTURE.md (package `protocol`)
and runs in its own process, as a plugin would, knowing nothing of llmservice.v1.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from grpc_tools import protoc

from .conftest import Service

CONTRACT = """
syntax = "proto3";
package protocol;

service LLMService {
  rpc Chat(LLMChatRequest) returns (LLMChatResponse);
  rpc StreamChat(LLMChatRequest) returns (stream LLMChatChunk);
}
message ChatMessage { string role = 1; string content = 2; }
message LLMChatRequest {
  string system_prompt = 1; string user_prompt = 2; string model = 3; double temperature = 4;
  int32 max_tokens = 5; string provider = 6; repeated Attachment attachments = 7;
  repeated ChatMessage messages = 8; int32 priority = 9;
}
message Attachment { string mime_type = 1; string data = 2; string filename = 3; }
message LLMChatResponse {
  string content = 1; string model = 2; int32 prompt_tokens = 3; int32 completion_tokens = 4;
  int32 total_tokens = 5;
}
message LLMChatChunk {
  string token = 1; bool done = 2; string model = 3; int32 prompt_tokens = 4; int32 completion_tokens = 5;
  int32 total_tokens = 6; TokenSignalProto signal = 7;
}
message TokenSignalProto {
  float confidence = 1; float entropy = 2; float top_gap = 3; repeated TokenCandidateProto top_k = 4;
  repeated float full_distribution = 5; repeated SamplerStageProto sampler_stages = 6;
}
message TokenCandidateProto { int32 id = 1; string text = 2; float prob = 3; }
message SamplerStageProto {
  string name = 1; int32 active_count = 2; float top1_prob = 3; float entropy = 4;
  repeated TokenCandidateProto top_k = 5;
}
"""

PLUGIN = """
import json, sys
import grpc
import plugin_contract_pb2 as pb
import plugin_contract_pb2_grpc as pb_grpc

stub = pb_grpc.LLMServiceStub(grpc.insecure_channel(sys.argv[1]))
request = pb.LLMChatRequest(
    messages=[pb.ChatMessage(role="system", content="Be brief."), pb.ChatMessage(role="user", content="Hi!")],
    temperature=0.0, max_tokens=10, priority=0)
reply = stub.Chat(request)
chunks = list(stub.StreamChat(request))
legacy = stub.Chat(pb.LLMChatRequest(system_prompt="Be brief.", user_prompt="Hi!", max_tokens=10))
print(json.dumps({
    "content": reply.content, "model": reply.model, "usage": [reply.prompt_tokens, reply.completion_tokens,
    reply.total_tokens], "streamed": "".join(c.token for c in chunks if not c.done),
    "done": [c.done for c in chunks], "final_usage": [chunks[-1].prompt_tokens, chunks[-1].completion_tokens,
    chunks[-1].total_tokens], "legacy": legacy.content,
}))
"""


async def test_a_client_generated_from_the_contract_table_works_unchanged(
    service: Service, tmp_path: Path
) -> None:
    (tmp_path / "plugin_contract.proto").write_text(CONTRACT)
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{tmp_path}",
                f"--python_out={tmp_path}",
                f"--grpc_python_out={tmp_path}",
                str(tmp_path / "plugin_contract.proto"),
            ]
        )
        == 0
    )
    (tmp_path / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "plugin.py", service.target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    assert result["content"]
    assert result["model"] == "smollm2-135m-instruct-q4_1"
    prompt, completion, total = result["usage"]
    assert prompt > 0
    assert completion == 10
    assert total == prompt + completion
    assert result["streamed"] == result["content"]
    assert result["done"] == [False] * 10 + [True]
    assert result["final_usage"] == result["usage"]
    assert result["legacy"] == result["content"]
