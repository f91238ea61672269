"""Chat sessions (/llmchat): an MCP server's tools, an LLM, an agent loop, and history."""

from llmservice.service.sessions.agent import ToolInvocation, ToolStarted, TurnEvent, TurnFinal, TurnToken
from llmservice.service.sessions.config import LLMConfig, ServerConfig
from llmservice.service.sessions.manager import Connected, SessionManager

__all__ = [
    "Connected",
    "LLMConfig",
    "ServerConfig",
    "SessionManager",
    "ToolInvocation",
    "ToolStarted",
    "TurnEvent",
    "TurnFinal",
    "TurnToken",
]
