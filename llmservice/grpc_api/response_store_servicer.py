"""The ResponseStoreService servicer: decode, call the store as the caller's principal, encode."""

from __future__ import annotations

from typing import Any

import grpc

from llmservice._pb.llmservice.v1 import response_store_pb2 as pb
from llmservice._pb.llmservice.v1 import response_store_pb2_grpc as pb_grpc
from llmservice.grpc_api.status import errors_to_status
from llmservice.service.auth import AuthPolicy, Principal
from llmservice.service.stored_responses import StoredResponses

Context = grpc.aio.ServicerContext[Any, Any]


class ResponseStoreServicer(pb_grpc.ResponseStoreServiceServicer):
    def __init__(self, store: StoredResponses, auth: AuthPolicy) -> None:
        self._store, self._auth = store, auth

    def _principal(self, context: Context) -> Principal:
        return self._auth.authenticate(context.invocation_metadata() or ())

    @errors_to_status()
    async def PutResponse(self, request: pb.PutResponseRequest, context: Context) -> pb.PutResponseResponse:
        doc = request.response
        ttl = await self._store.put(self._principal(context), doc.id, doc.body_json)
        return pb.PutResponseResponse(ttl_s=ttl)

    @errors_to_status()
    async def GetResponse(self, request: pb.GetResponseRequest, context: Context) -> pb.GetResponseResponse:
        body = await self._store.get(self._principal(context), request.id)
        return pb.GetResponseResponse(response=pb.StoredResponse(id=request.id, body_json=body))

    @errors_to_status()
    async def DeleteResponse(
        self, request: pb.DeleteResponseRequest, context: Context
    ) -> pb.DeleteResponseResponse:
        await self._store.delete(self._principal(context), request.id)
        return pb.DeleteResponseResponse(id=request.id)
