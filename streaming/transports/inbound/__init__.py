"""Inbound protocols other than OpenAI chat: their request bodies as the engine's ChatRequest."""
