"""X-Forwarded-For is believed only from SLUICE_TRUSTED_PROXIES.

A client on loopback that claims another address must not pass the /metrics
network check nor put that address into the audit.
"""

from __future__ import annotations

import httpx

from tests.conftest import wait_for_audit
from tests.edge.conftest import actor_on

FORGED = "203.0.113.7"
METRICS_ONLY_FOR_FORGED = {"SLUICE_METRICS_ALLOWED_NETWORKS": "203.0.113.0/24"}


def audited_client_ip(server, actor, model: str) -> str | None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={**actor.headers, "X-Forwarded-For": FORGED},
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return wait_for_audit(response.headers["x-sluice-stream-id"]).client_ip


def test_a_forged_forwarded_for_changes_nothing(start_gateway, live_db, demo_model):
    server = start_gateway(**METRICS_ONLY_FOR_FORGED)
    forged = {"X-Forwarded-For": FORGED}
    assert httpx.get(f"{server.url}/metrics", headers=forged, timeout=10).status_code == 403
    assert audited_client_ip(server, actor_on(server, "alice"), demo_model) == "127.0.0.1"


def test_a_trusted_proxy_header_is_honoured(start_gateway, live_db, demo_model):
    server = start_gateway(SLUICE_TRUSTED_PROXIES="127.0.0.1/32", **METRICS_ONLY_FOR_FORGED)
    forged = {"X-Forwarded-For": FORGED}
    assert httpx.get(f"{server.url}/metrics", headers=forged, timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 403
    assert audited_client_ip(server, actor_on(server, "alice"), demo_model) == FORGED
