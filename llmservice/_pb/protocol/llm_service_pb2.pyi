from llmservice._pb.llmservice.v1 import llm_service_pb2 as _llm_service_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
