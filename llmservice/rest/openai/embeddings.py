"""POST /v1/embeddings in OpenAI's shape, over LLMService.Embed: decode, call, encode.

`input` is a string or a list of strings (token-id arrays are refused by name);
`encoding_format` float or base64 (little-endian float32, what the openai client asks
for by default); `dimensions` goes to the service, which refuses it where the model
cannot honour it. Unknown fields are a 400 naming them.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice.rest.disconnect import cancelled_on_disconnect
from llmservice.rest.openai.protocol import dump
from llmservice.rest.params import refuse_unknown

Metadata = tuple[tuple[str, str], ...]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are refused by name, not dropped

    input: str | list[str]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=2**31 - 1)  # an int32 on the wire
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# The body is parsed by the handler (parse), so the document is told its schema here.
BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
    }
}


def to_grpc(req: EmbeddingRequest) -> pb.EmbedRequest:
    refuse_unknown(req)
    texts = [req.input] if isinstance(req.input, str) else req.input
    return pb.EmbedRequest(input=texts, model=req.model, dimensions=req.dimensions, user=req.user or "")


async def embeddings(
    stub: pb_grpc.LLMServiceAsyncStub, req: EmbeddingRequest, metadata: Metadata, request: Request
) -> Response:
    call = stub.Embed(to_grpc(req), metadata=metadata)
    async with cancelled_on_disconnect(request, call):  # a client that leaves stops the work
        reply = await call
    encode = _base64 if req.encoding_format == "base64" else list
    body = EmbeddingList(
        object="list",
        data=[
            EmbeddingData(object="embedding", index=i, embedding=encode(e.values))
            for i, e in enumerate(reply.embeddings)
        ],
        model=reply.model,
        usage=EmbeddingUsage(prompt_tokens=reply.prompt_tokens, total_tokens=reply.total_tokens),
    )
    return Response(dump(body), media_type="application/json")


def _base64(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
