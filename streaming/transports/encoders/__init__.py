"""Encoders: a stream's neutral events in, one protocol's bytes out, per reader.

Plain classes with no I/O (``streaming.core.reader.Encoder``). Each inbound
protocol renders events its own way (``chat``: OpenAI chat completion chunks
over SSE, NDJSON and WebSocket frames; ``text``: the bare text). A new inbound
protocol is a new module here with one class per framing it is read over.
"""
