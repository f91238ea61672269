"""Chat sessions (/llmchat): an MCP server's tools, an LLM, an agent loop, and history."""

from llmservice.service.sessions.agent import ToolInvocation, ToolStarted, TurnEvent, TurnFinal, TurnToken
from llmservice.service.sessions.config import ServerConfig
from llmservice.service.sessions.manager import Connected, SessionManager
from llmservice.service.sessions.records import LLMChoice

__all__ = [
    "Connected",
    "LLMChoice",
    "ServerConfig",
    "SessionManager",
    "ToolInvocation",
    "ToolStarted",
    "TurnEvent",
    "TurnFinal",
    "TurnToken",
]
