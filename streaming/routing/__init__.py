"""Routing: routes, the fallback chain, retries, the circuit breaker, continuation."""
