"""Transports: ASGI routing, HTTP endpoints, the WebSocket consumer, request
schemas, wire encoders."""
