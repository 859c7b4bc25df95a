"""docker-compose.yml stays valid and runs what the tests run (no Docker engine
here): its nginx configuration is run by a real nginx in front of a served gateway."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from websockets.sync.client import connect

from tests.conftest import unique
from tests.fakes.nginx import Nginx, compose_nginx_config

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_nginx_in_front_of_two_gateways_over_postgres_and_redis():
    services = compose()["services"]

    assert {"postgres", "redis", "migrate", "gateway-a", "gateway-b", "nginx"} <= set(services)
    for name in ("gateway-a", "gateway-b"):
        gateway = services[name]
        env = gateway["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://redis:")
        # Secrets must be supplied: compose refuses to start without them.
        assert ":?" in env["SECRET_KEY"] and ":?" in env["SLUICE_ENCRYPTION_KEY"]
        assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "ports" not in gateway  # reached through nginx only
        # X-Forwarded-For is believed from nginx alone.
        nginx_ip = services["nginx"]["networks"]["sluice"]["ipv4_address"]
        assert env["SLUICE_TRUSTED_PROXIES"] == f"{nginx_ip}/32"
    assert services["migrate"]["command"][:3] == ["python", "manage.py", "migrate"]
    assert services["nginx"]["ports"] == ["8000:80"]
    for name, service in services.items():
        if name != "migrate":  # a one-shot job
            assert service["healthcheck"]["test"], f"{name} has no healthcheck"


def test_the_nginx_configuration_is_streaming_safe():
    site = compose_nginx_config()
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_read_timeout 3600s;",
        "gzip off;",
    ):
        assert directive in site
    assert "proxy_ignore_headers" not in site  # X-Accel-Buffering is honoured


def test_the_image_runs_the_production_server_as_a_user_with_a_healthcheck():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"manage.py", "sluice_serve"' in dockerfile
    for package in ("gateway", "streaming", "accounts", "audit", "templates"):
        assert f"COPY {package} {package}" in dockerfile
        assert (ROOT / package).is_dir()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


@pytest.fixture
def nginx(gateway, tmp_path):
    if Nginx.binary() is None:
        pytest.skip("nginx is not installed (make test installs Debian's nginx-light)")
    proxy = Nginx([f"127.0.0.1:{gateway.port}"], tmp_path)
    checked = proxy.test_config()
    assert checked.returncode == 0, checked.stderr
    with proxy:
        yield proxy


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_streams_pass_through_the_compose_nginx_as_they_are_made(
    nginx, alice, upstream, make_route
):
    upstream_model = unique("paced")
    upstream.script(upstream_model, tokens=[f"t{i} " for i in range(60)], delay=0.05)
    model = make_route(("openai", upstream.base_url, upstream_model))
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}

    with httpx.stream(
        "POST", f"{nginx.url}/v1/chat/completions", headers=alice.headers, json=body, timeout=20
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        # The first token is here while the upstream is still generating: nothing buffered it.
        assert upstream.open_requests >= 1
        rest = [line for line in lines if line.startswith("data: ")]
    assert json.loads(first[6:])["choices"][0]["delta"]
    assert rest[-1] == "data: [DONE]"

    ws_url = nginx.url.replace("http://", "ws://") + "/v1/ws"
    with connect(ws_url, additional_headers=alice.headers) as socket:
        socket.send(json.dumps({"type": "chat.create", "request_id": "r1", **body}))
        kinds = []
        while not kinds or kinds[-1] not in ("stream.done", "error"):
            kinds.append(json.loads(socket.recv(timeout=20))["type"])
    assert kinds[0] == "stream.created" and kinds[-1] == "stream.done" and "chunk" in kinds
