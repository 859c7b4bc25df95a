"""Inbound protocols other than chat: each request shape translated to a ChatRequest."""
