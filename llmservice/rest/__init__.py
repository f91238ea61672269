"""The HTTP shim: the OpenAI API (and later /llmchat) on top of the gRPC service.

It talks to the service only through the generated gRPC stubs, so whatever it can do
a plugin can do over gRPC. It holds no state and imports neither providers nor the
engine.
"""

from llmservice.rest.app import create_app

__all__ = ["create_app"]
