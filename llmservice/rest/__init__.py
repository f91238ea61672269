"""The HTTP shim: the OpenAI API, the /llmchat session API and the web chat page, on top of
the gRPC service.

It talks to the service only through the generated gRPC stubs, so whatever it can do
a plugin can do over gRPC. It holds no state and imports no service, provider or servicer
(an import contract checks it).
"""

from llmservice.rest.app import create_app

__all__ = ["create_app"]
