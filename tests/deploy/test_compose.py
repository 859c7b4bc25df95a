"""docker-compose.yml stays valid and runs what the tests run (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_postgres_redis_and_two_gateways_over_them():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    assert {"postgres", "redis", "migrate", "gateway-a", "gateway-b"} <= set(services)
    for name in ("gateway-a", "gateway-b"):
        gateway = services[name]
        env = gateway["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://redis:")
        # Secrets must be supplied: compose refuses to start without them.
        assert ":?" in env["SECRET_KEY"] and ":?" in env["SLUICE_ENCRYPTION_KEY"]
        assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"][:3] == ["python", "manage.py", "migrate"]


def test_the_image_serves_with_the_production_server_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"manage.py", "sluice_serve"' in dockerfile
    for package in ("gateway", "streaming", "accounts", "audit", "templates"):
        assert f"COPY {package} {package}" in dockerfile
        assert (ROOT / package).is_dir()
