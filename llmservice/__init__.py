"""llmservice: one gRPC service for large language models, in-process or at a provider."""
