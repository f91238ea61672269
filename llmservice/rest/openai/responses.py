"""The OpenAI Responses API over LLMService and ResponseStoreService.

A request becomes the conversation it stands for (the stored conversation of
`previous_response_id`, then its `input`, under its `instructions`), which goes to the
service as a chat; the reply becomes output items. With `store` (the default, as at
OpenAI) the response and its conversation are kept by the service per principal, so a
later request can continue from it and GET / DELETE /v1/responses/{id} find it.

A stream is a sequence of typed events (response.created, response.in_progress, the
output items' added / delta / done events, then response.completed, or
response.incomplete when max_output_tokens cut it), each with its sequence_number. As
for chat completions, the stream answers only once the first chunk is back, so an
early failure is an ordinary HTTP error; a failure after that ends the stream with
response.failed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from llmservice._pb.llmservice.v1 import llm_service_pb2 as pb
from llmservice._pb.llmservice.v1 import llm_service_pb2_grpc as pb_grpc
from llmservice._pb.llmservice.v1 import response_store_pb2 as store_pb
from llmservice._pb.llmservice.v1 import response_store_pb2_grpc as store_grpc
from llmservice.rest.body import parse_body
from llmservice.rest.caller import caller_metadata
from llmservice.rest.disconnect import cancelled_on_disconnect
from llmservice.rest.errors import APIError, from_grpc, invalid
from llmservice.rest.event_stream import line_safe
from llmservice.rest.openai import codec
from llmservice.rest.openai import protocol as oa
from llmservice.rest.openai import responses_protocol as rp
from llmservice.rest.params import refuse_unknown

Metadata = tuple[tuple[str, str], ...]
BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponseRequest"}}},
    },
}


def router() -> APIRouter:
    api = APIRouter(
        tags=["openai"], responses={c: {"model": oa.ErrorResponse} for c in (400, 401, 404, 429, 500)}
    )

    @api.post("/responses", response_model=rp.Response, summary="Create a response", openapi_extra=BODY_DOC)
    async def create(request: Request) -> Response:
        body = parse_body(rp.ResponseRequest, await request.body())
        metadata, priority = caller_metadata(request), request.headers.get("x-priority")
        return await _serving(request).create(body, request, metadata, priority)

    @api.get("/responses/{response_id}", response_model=rp.Response, summary="A stored response")
    async def get(response_id: str, request: Request) -> Response:
        doc = await _serving(request).document(response_id, caller_metadata(request))
        return _json_bytes(json.dumps(doc["response"]).encode())

    @api.delete(
        "/responses/{response_id}", response_model=rp.DeletedResponse, summary="Delete a stored response"
    )
    async def delete(response_id: str, request: Request) -> Response:
        await _serving(request).delete(response_id, caller_metadata(request))
        return _json(rp.DeletedResponse(id=response_id))

    @api.get(
        "/responses/{response_id}/input_items",
        response_model=rp.InputItemList,
        summary="The input items of a stored response",
    )
    async def input_items(
        response_id: str, request: Request, order: str = "desc", limit: int = 20, after: str | None = None
    ) -> Response:
        doc = await _serving(request).document(response_id, caller_metadata(request))
        return _json(_page(doc["input_items"], order, limit, after))

    return api


def _serving(request: Request) -> ResponsesServing:
    serving: ResponsesServing = request.app.state.responses
    return serving


class ResponsesServing:
    def __init__(
        self, llm: pb_grpc.LLMServiceAsyncStub, store: store_grpc.ResponseStoreServiceAsyncStub
    ) -> None:
        self._llm, self._store = llm, store

    async def create(
        self, req: rp.ResponseRequest, request: Request, metadata: Metadata, priority: str | None
    ) -> Response:
        _refuse_unsupported(req)
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            try:
                history = (await self.document(req.previous_response_id, metadata))["messages"]
            except APIError as exc:
                exc.param = "previous_response_id" if exc.status == 404 else exc.param
                raise
        items, new = _input(req.input)
        conversation = [oa.ChatMessage.model_validate(m) for m in history] + new
        msg = codec.to_grpc(_chat_request(req, conversation), priority)
        turn = _Turn(req, conversation, items)
        if req.stream:
            stream = self._llm.StreamChat(msg, metadata=metadata)
            async with cancelled_on_disconnect(request, stream):  # it may wait in the queue
                first = await stream.read()
            events = self._events(turn, stream, first, metadata)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        call = self._llm.Chat(msg, metadata=metadata)
        async with cancelled_on_disconnect(request, call):
            reply = await call
        turn.text, turn.calls = reply.content, list(reply.tool_calls)
        response = turn.response(reply)
        await self._keep(turn, response, metadata)
        return _json(response)

    async def document(self, response_id: str, metadata: Metadata) -> dict[str, Any]:
        try:
            found = await self._store.GetResponse(
                store_pb.GetResponseRequest(id=response_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _named(exc, response_id) from None
        doc: dict[str, Any] = json.loads(found.response.body_json)
        return doc

    async def delete(self, response_id: str, metadata: Metadata) -> None:
        try:
            await self._store.DeleteResponse(
                store_pb.DeleteResponseRequest(id=response_id), metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _named(exc, response_id) from None

    async def _keep(self, turn: _Turn, response: rp.Response, metadata: Metadata) -> None:
        if not turn.req.store:
            return
        doc = {"response": response.model_dump(mode="json"), **turn.stored()}
        stored = store_pb.StoredResponse(id=response.id, body_json=json.dumps(doc, separators=(",", ":")))
        await self._store.PutResponse(store_pb.PutResponseRequest(response=stored), metadata=metadata)

    async def _events(self, turn: _Turn, call: Any, first: Any, metadata: Metadata) -> AsyncIterator[bytes]:
        events = _Events()
        start = turn.response(None).model_dump(mode="json")  # once, for both events
        yield events.frame("response.created", response=start) + events.frame(
            "response.in_progress", response=start
        )
        text: _TextItem | None = None
        calls: dict[int, _CallItem] = {}
        output = 0  # the next output index
        chunk = first
        try:
            while chunk is not grpc.aio.EOF and not chunk.done:
                if chunk.token:
                    if text is None:
                        text = _TextItem(output)
                        output += 1
                        yield text.added(events)
                    text.parts.append(chunk.token)
                    yield events.frame(
                        "response.output_text.delta",
                        item_id=text.id,
                        output_index=text.index,
                        content_index=0,
                        delta=chunk.token,
                        logprobs=[],
                    )
                if chunk.HasField("tool_call"):
                    d = chunk.tool_call
                    item = calls.get(d.index)
                    if item is None:
                        item = calls[d.index] = _CallItem(output, d.id, d.name)
                        output += 1
                        yield item.added(events)
                    if d.arguments_json:
                        item.arguments.append(d.arguments_json)
                        yield events.frame(
                            "response.function_call_arguments.delta",
                            item_id=item.id,
                            output_index=item.index,
                            delta=d.arguments_json,
                        )
                chunk = await call.read()
            if chunk is grpc.aio.EOF:
                raise APIError(502, "the service ended the stream before it finished", "upstream_error")
            turn.text = "".join(text.parts) if text else ""
            turn.calls = [c.tool_call() for c in sorted(calls.values(), key=lambda c: c.index)]
            response = turn.response(chunk)
            status = response.status
            if text is not None:
                yield text.done(events, status)
            for item in sorted(calls.values(), key=lambda c: c.index):
                yield item.done(events)
            if text is None and not calls:  # an empty reply is still one (empty) message
                empty = _TextItem(0)
                yield empty.added(events) + empty.done(events, status)
            await self._keep(turn, response, metadata)
            yield events.frame(f"response.{status}", response=response)
        except (grpc.aio.AioRpcError, APIError) as exc:
            error = from_grpc(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc
            failed = turn.response(None).model_copy(
                update={"status": "failed", "error": rp.ResponseError(code=error.type, message=error.message)}
            )
            yield events.frame("response.failed", response=failed)
        finally:
            call.cancel()


class _Turn:
    """One request's conversation and reply, as the response and the stored record see them."""

    def __init__(
        self, req: rp.ResponseRequest, conversation: list[oa.ChatMessage], items: list[dict[str, Any]]
    ):
        self.req, self.conversation, self.items = req, conversation, items
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.text = ""
        self.calls: list[pb.ToolCall] = []
        self._message_id = f"msg_{uuid.uuid4().hex}"
        self._call_ids: list[str] = []  # made as calls come, the same for every look at the output

    def output(self, status: str) -> list[rp.OutputItem]:
        out: list[rp.OutputItem] = []
        if self.text or not self.calls:
            item_status = "incomplete" if status == "incomplete" else "completed"
            text = [rp.OutputText(text=self.text)]
            out.append(rp.OutputMessage(id=self._message_id, status=item_status, content=text))
        self._call_ids += [f"fc_{uuid.uuid4().hex}" for _ in range(len(self.calls) - len(self._call_ids))]
        for fc_id, c in zip(self._call_ids, self.calls, strict=False):
            out.append(
                rp.OutputFunctionCall(
                    id=fc_id, call_id=c.id, name=c.name, arguments=c.arguments_json, status="completed"
                )
            )
        return out

    def response(self, reply: pb.LLMChatResponse | pb.LLMChatChunk | None) -> rp.Response:
        """The response object: in progress without a reply, else as the reply ended."""
        req = self.req
        status, usage, incomplete = "in_progress", None, None
        if reply is not None:
            status = "completed"
            if reply.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_CONTENT_FILTER):
                status = "incomplete"
                reason = (
                    "max_output_tokens"
                    if reply.finish_reason == pb.FINISH_REASON_LENGTH
                    else "content_filter"
                )
                incomplete = rp.IncompleteDetails(reason=reason)
            usage = rp.ResponseUsage(
                input_tokens=reply.prompt_tokens,
                input_tokens_details=rp.InputTokensDetails(cached_tokens=reply.cached_prompt_tokens),
                output_tokens=reply.completion_tokens,
                output_tokens_details=rp.OutputTokensDetails(),
                total_tokens=reply.prompt_tokens + reply.completion_tokens,
            )
        fmt = req.text.format if req.text and req.text.format else None
        return rp.Response(
            id=self.id,
            created_at=self.created,
            status=status,
            incomplete_details=incomplete,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=reply.model if reply is not None else req.model,
            output=self.output(status) if reply is not None else [],
            parallel_tool_calls=req.parallel_tool_calls is not False,
            previous_response_id=req.previous_response_id,
            store=req.store,
            temperature=req.temperature,
            text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            tool_choice=_dumped(req.tool_choice) if req.tool_choice is not None else "auto",
            tools=[t.model_dump(exclude_none=True) for t in req.tools or ()],
            top_p=req.top_p,
            usage=usage,
            user=req.user,
            metadata=req.metadata or {},
        )

    def stored(self) -> dict[str, Any]:
        """The conversation a later request continues (this reply included), and this input's items."""
        reply: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            reply["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
                for c in self.calls
            ]
        conversation = [m.model_dump(exclude_none=True) for m in self.conversation]
        return {"messages": [*conversation, reply], "input_items": self.items}


class _Events:
    """Event-stream frames with their sequence numbers."""

    def __init__(self) -> None:
        self._seq = 0

    def frame(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq}
        self._seq += 1
        for key, value in fields.items():
            data[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return b"event: " + kind.encode() + b"\ndata: " + line_safe(body) + b"\n\n"


class _TextItem:
    def __init__(self, index: int) -> None:
        self.index, self.id = index, f"msg_{uuid.uuid4().hex}"
        self.parts: list[str] = []

    def _item(self, status: str, text: str | None) -> dict[str, Any]:
        content = (
            [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        )
        return {"type": "message", "id": self.id, "status": status, "role": "assistant", "content": content}

    def added(self, events: _Events) -> bytes:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return events.frame(
            "response.output_item.added", output_index=self.index, item=self._item("in_progress", None)
        ) + events.frame(
            "response.content_part.added",
            item_id=self.id,
            output_index=self.index,
            content_index=0,
            part=part,
        )

    def done(self, events: _Events, status: str) -> bytes:
        text = "".join(self.parts)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item_status = "incomplete" if status == "incomplete" else "completed"
        return (
            events.frame(
                "response.output_text.done",
                item_id=self.id,
                output_index=self.index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            + events.frame(
                "response.content_part.done",
                item_id=self.id,
                output_index=self.index,
                content_index=0,
                part=part,
            )
            + events.frame(
                "response.output_item.done", output_index=self.index, item=self._item(item_status, text)
            )
        )


class _CallItem:
    def __init__(self, index: int, call_id: str, name: str) -> None:
        self.index, self.id, self.call_id, self.name = index, f"fc_{uuid.uuid4().hex}", call_id, name
        self.arguments: list[str] = []

    def _item(self, status: str) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": self.id,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.arguments) if status != "in_progress" else "",
            "status": status,
        }

    def added(self, events: _Events) -> bytes:
        return events.frame(
            "response.output_item.added", output_index=self.index, item=self._item("in_progress")
        )

    def done(self, events: _Events) -> bytes:
        arguments = "".join(self.arguments)
        return events.frame(
            "response.function_call_arguments.done",
            item_id=self.id,
            output_index=self.index,
            name=self.name,
            arguments=arguments,
        ) + events.frame("response.output_item.done", output_index=self.index, item=self._item("completed"))

    def tool_call(self) -> pb.ToolCall:
        return pb.ToolCall(id=self.call_id, name=self.name, arguments_json="".join(self.arguments))


def _refuse_unsupported(req: rp.ResponseRequest) -> None:
    refuse_unknown(req)
    if req.include:
        raise invalid("include", f"{req.include[0]!r}: nothing beyond the output can be included")
    if req.reasoning and any(v is not None for v in req.reasoning.values()):
        raise invalid("reasoning", "the models here have no reasoning settings")
    if req.truncation == "auto":
        raise invalid("truncation", "only 'disabled' is supported: a conversation too long is refused")
    if req.stream_options and set(req.stream_options) - {"include_obfuscation"}:
        raise invalid("stream_options", "only include_obfuscation is known")
    if req.stream_options and not req.stream:
        raise invalid("stream_options", "needs stream: true")
    if req.previous_response_id is not None and not req.previous_response_id:
        raise invalid("previous_response_id", "is empty")


def _input(given: str | list[rp.InputItem]) -> tuple[list[dict[str, Any]], list[oa.ChatMessage]]:
    """The input's items as a stored response lists them (each with an id), and as chat messages."""
    if isinstance(given, str):
        only = {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex}",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": given}],
        }
        return [only], [oa.ChatMessage(role="user", content=given)]
    items: list[dict[str, Any]] = []
    messages: list[oa.ChatMessage] = []
    for i, item in enumerate(given):
        where = f"input[{i}]"
        if isinstance(item, rp.ItemReference):
            raise invalid(where, "item references are not supported: send the item itself")
        dumped = item.model_dump(exclude_none=True)
        dumped.setdefault("id", f"{'msg' if isinstance(item, rp.MessageItem) else 'fc'}_{uuid.uuid4().hex}")
        items.append(dumped)
        if isinstance(item, rp.MessageItem):
            messages.append(_message(where, item))
        elif isinstance(item, rp.FunctionCallItem):
            call = oa.ToolCall(
                id=item.call_id, function=oa.FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":  # calls of one turn, or its text and calls
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(oa.ChatMessage(role="assistant", tool_calls=[call]))
        else:
            output = item.output if isinstance(item.output, str) else "".join(p.text for p in item.output)
            messages.append(oa.ChatMessage(role="tool", tool_call_id=item.call_id, content=output))
    return items, messages


def _message(where: str, item: rp.MessageItem) -> oa.ChatMessage:
    if isinstance(item.content, str):
        return oa.ChatMessage(role=item.role, content=item.content)
    parts: list[oa.TextPart | oa.ImagePart] = []
    for j, part in enumerate(item.content):
        if isinstance(part, rp.InputImage):
            if part.image_url is None:
                raise invalid(
                    f"{where}.content[{j}].file_id", "files are not supported; send image_url as a data: URL"
                )
            parts.append(
                oa.ImagePart(type="image_url", image_url=oa.ImageURL(url=part.image_url, detail=part.detail))
            )
        else:
            parts.append(oa.TextPart(type="text", text=part.text))
    return oa.ChatMessage(role=item.role, content=parts)


def _chat_request(req: rp.ResponseRequest, conversation: list[oa.ChatMessage]) -> oa.ChatCompletionRequest:
    """The chat the response answers: instructions first (they are not carried to the next turn)."""
    messages = (
        [oa.ChatMessage(role="system", content=req.instructions)] if req.instructions else []
    ) + conversation
    if not messages:
        raise invalid("input", "is empty: there is nothing to answer")
    tools = [
        oa.ToolDefinition(
            type="function",
            function=oa.FunctionDefinition(
                name=t.name,
                description=t.description or "",
                parameters=t.parameters or {"type": "object", "properties": {}},
                strict=t.strict,
            ),
        )
        for t in req.tools or ()
    ]
    choice: str | oa.NamedToolChoice | None = None
    if isinstance(req.tool_choice, rp.FunctionToolChoice):
        choice = oa.NamedToolChoice(type="function", function={"name": req.tool_choice.name})
    else:
        choice = req.tool_choice
    fmt = req.text.format if req.text else None
    response_format = None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise invalid("text.format.schema", "is required with type json_schema")
        schema = oa.JSONSchemaFormat(name=fmt.name or "response", schema=fmt.schema_, strict=fmt.strict)
        response_format = oa.ResponseFormat(type="json_schema", json_schema=schema)
    elif fmt is not None and fmt.type == "json_object":
        response_format = oa.ResponseFormat(type="json_object")
    return oa.ChatCompletionRequest(
        messages=messages,
        model=req.model,
        temperature=req.temperature,
        top_p=req.top_p,
        max_completion_tokens=req.max_output_tokens,
        tools=tools or None,
        tool_choice=choice,
        parallel_tool_calls=req.parallel_tool_calls,
        response_format=response_format,
        user=req.user,
        priority=req.priority,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        seed=req.seed,
        cache_salt=req.cache_salt,
    )


def _page(items: list[dict[str, Any]], order: str, limit: int, after: str | None) -> rp.InputItemList:
    if order not in ("asc", "desc"):
        raise invalid("order", f"{order!r} is not asc or desc")
    if not 1 <= limit <= 100:
        raise invalid("limit", f"{limit} is outside 1 .. 100")
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [i.get("id") for i in ordered]
        if after not in ids:
            raise invalid("after", f"{after!r} is not one of the response's input items")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return rp.InputItemList(
        data=page,
        first_id=page[0].get("id") if page else None,
        last_id=page[-1].get("id") if page else None,
        has_more=len(ordered) > limit,
    )


def _named(exc: grpc.aio.AioRpcError, response_id: str) -> APIError:
    error = from_grpc(exc)
    if error.status == 404:
        error.message, error.param = f"response {response_id!r} not found", "response_id"
    return error


def _dumped(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _json(reply: BaseModel) -> Response:
    return _json_bytes(reply.model_dump_json().encode())


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")
