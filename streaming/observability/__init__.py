"""Observability: Prometheus metrics, live stats, structured logs."""
