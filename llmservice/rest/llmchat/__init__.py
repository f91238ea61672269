"""The /llmchat session API: one route per ChatSessionService call."""
