"""The ModelAdminService servicer: decode, call ModelAdmin, encode."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from llmservice._pb.llmservice.v1 import model_admin_pb2 as pb
from llmservice._pb.llmservice.v1 import model_admin_pb2_grpc as pb_grpc
from llmservice.grpc_api.status import MODEL_NOT_FOUND, errors_to_status
from llmservice.kernel.context import request_trailer
from llmservice.service.auth import AuthPolicy
from llmservice.service.model_admin import ModelAdmin


class ModelAdminServicer(pb_grpc.ModelAdminServiceServicer):
    def __init__(self, admin: ModelAdmin, auth: AuthPolicy) -> None:
        self._admin = admin
        self._auth = auth

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def LoadModel(
        self,
        request: pb.LoadModelRequest,
        context: grpc.aio.ServicerContext[pb.LoadModelRequest, pb.LoadModelResponse],
    ) -> pb.LoadModelResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        done = await self._admin.load(
            request.provider, request.model, make_default=request.make_default, principal=principal
        )
        return pb.LoadModelResponse(
            provider=done.provider, model=done.model, was_loaded=done.was_loaded, is_default=done.is_default
        )

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def UnloadModel(
        self,
        request: pb.UnloadModelRequest,
        context: grpc.aio.ServicerContext[pb.UnloadModelRequest, pb.UnloadModelResponse],
    ) -> pb.UnloadModelResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        provider, model, was_loaded = await self._admin.unload(request.provider, request.model, principal)
        return pb.UnloadModelResponse(provider=provider, model=model, was_loaded=was_loaded)

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def PullModel(
        self,
        request: pb.PullModelRequest,
        context: grpc.aio.ServicerContext[pb.PullModelRequest, pb.PullModelResponse],
    ) -> AsyncIterator[pb.PullModelResponse]:
        context.set_trailing_metadata(request_trailer())  # unary calls get theirs from CallContext
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        _, steps = self._admin.pull(
            request.provider,
            request.source,
            sha256=request.sha256,
            name=request.name,
            principal=principal,
        )
        # aclosing: a caller that leaves stops the download (a partial file stays, to resume)
        async with contextlib.aclosing(steps) as running:
            async for step in running:
                yield pb.PullModelResponse(
                    status=step.status,
                    digest=step.digest,
                    total=step.total,
                    completed=step.completed,
                    done=step.status == "success",
                    model=step.model,
                )

    @errors_to_status(not_found=MODEL_NOT_FOUND)
    async def DeleteModel(
        self,
        request: pb.DeleteModelRequest,
        context: grpc.aio.ServicerContext[pb.DeleteModelRequest, pb.DeleteModelResponse],
    ) -> pb.DeleteModelResponse:
        principal = self._auth.authenticate(context.invocation_metadata() or ())
        provider, model = await self._admin.delete(request.provider, request.model, principal)
        return pb.DeleteModelResponse(provider=provider, model=model)
