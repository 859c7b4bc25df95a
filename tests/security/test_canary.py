"""Secrets canary: plant recognisable secrets, drive every path, look everywhere.

The provider keys (one stored in the database, one from an environment
variable), the app's client secret and its bearer token must appear in no
response, admin page, config export, metrics, dashboard feed, log line,
audit row or Redis value, whatever the upstream does (issue 18).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Actor, fetch_token, unique, wait_for_audit
from tests.live import ROOT, GatewayServer, server_env
from tests.routing.admin_client import AdminClient
from tests.routing.conftest import HELLO

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)"),
]

DB_KEY = "CanaryDbKey" + secrets.token_hex(12)  # no key-like shape: found only as itself
ENV_KEY = "sk-ant-canaryEnv" + secrets.token_hex(12)
ENV_NAME = "SLUICE_TEST_CANARY_PROVIDER_KEY"
FAULTS = [
    {},
    {"fault": "http_500"},
    {"fault": "http_429", "retry_after": "0"},
    {"fault": "echo_400"},
    {"fault": "echo_422"},
    {"fault": "echo_429"},
    {"fault": "echo_500"},
    {"fault": "echo_event", "fault_after": "2"},
    {"fault": "echo_event", "fault_after": "0"},
    {"fault": "shape", "fault_after": "1"},
    {"fault": "malformed", "fault_after": "1"},
    {"fault": "die", "fault_after": "2"},
]


@pytest.fixture(scope="module")
def canary_gateway(django_db_setup: None) -> Iterator[GatewayServer]:
    env = server_env(LOG_LEVEL="DEBUG", **{ENV_NAME: ENV_KEY})
    server = GatewayServer(env=env).start()
    yield server
    server.stop()


def upstream_model(fault: dict[str, str]) -> str:
    return "fake:tokens=5," + ",".join(f"{k}={v}" for k, v in fault.items())


def routes(upstream) -> list[str]:
    """A route per fault and provider: one keyed from the database, one from the env."""
    from streaming.models import ModelRoute, Provider, RouteTarget

    stored = Provider(name=unique("canary-db"), kind="openai", base_url=upstream.base_url)
    stored.set_api_key(DB_KEY)
    stored.save()
    from_env = Provider.objects.create(
        name=unique("canary-env"),
        kind="anthropic",
        base_url=upstream.base_url,
        api_key_env=ENV_NAME,
    )
    names = []
    for provider in (stored, from_env):
        for fault in FAULTS:
            route = ModelRoute.objects.create(
                model=unique("canary"), first_token_timeout=5, stall_timeout=5, backoff_seconds=0
            )
            RouteTarget.objects.create(
                route=route, provider=provider, upstream_model=upstream_model(fault)
            )
            names.append(route.model)
    return names


def drive(gateway: GatewayServer, actor: Actor, model: str) -> tuple[list[str], list[str]]:
    """Every transport once: the texts the client got and the stream ids."""
    texts, ids = [], []
    url = f"{gateway.url}/v1/chat/completions"
    for stream in (True, False):
        body = {"model": model, "messages": HELLO, "stream": stream}
        response = httpx.post(url, headers=actor.headers, json=body, timeout=30)
        texts.append(response.text)
        ids.append(response.headers["x-sluice-stream-id"])
    ws_url = gateway.url.replace("http", "ws", 1) + "/v1/ws"
    with connect(ws_url, additional_headers=actor.headers, open_timeout=10) as socket:
        socket.send(json.dumps({"type": "chat.create", "model": model, "messages": HELLO}))
        while True:
            message = socket.recv(timeout=30)
            texts.append(str(message))
            if '"stream.done"' in message:
                break
        ids.append(json.loads(texts[-1])["stream_id"])
    return texts, ids


def redis_values() -> Iterator[tuple[str, str]]:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    readers = {
        b"string": lambda k: [client.get(k)],
        b"hash": lambda k: [*client.hgetall(k).keys(), *client.hgetall(k).values()],
        b"list": lambda k: client.lrange(k, 0, -1),
        b"set": lambda k: list(client.smembers(k)),
        b"zset": lambda k: client.zrange(k, 0, -1),
        b"stream": lambda k: [str(entry) for entry in client.xrange(k)],
    }
    try:
        for key in client.scan_iter(count=1000):
            read = readers.get(client.type(key))
            values = read(key) if read else []
            yield f"redis key {key!r}", f"{key!r} " + " ".join(str(v) for v in values)
    finally:
        client.close()


def admin_pages(gateway: GatewayServer, stream_ids: list[str]) -> Iterator[tuple[str, str]]:
    from audit.models import AuditRecord
    from streaming.models import Provider

    admin = AdminClient(gateway.url)
    try:
        paths = ["/admin/streaming/provider/", "/admin/audit/auditrecord/"]
        paths += [f"/admin/streaming/provider/{p.pk}/change/" for p in Provider.objects.all()]
        records = AuditRecord.objects.filter(request_id__in=stream_ids)
        paths += [f"/admin/audit/auditrecord/{r.pk}/change/" for r in records]
        for path in paths:
            response = admin.get(path)
            assert response.status_code == 200, path
            yield f"admin page {path}", response.text
        with admin.http.stream("GET", "/admin/sluice/dashboard/feed") as feed:
            lines = []
            for line in feed.iter_lines():
                lines.append(line)
                if len(lines) > 4:
                    break
        yield "the dashboard feed", "\n".join(lines)
    finally:
        admin.close()


def config_export(gateway: GatewayServer) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "sluice_config", "export", "--format", "json"],
        cwd=ROOT,
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def audit_rows() -> str:
    from audit.models import AuditRecord, UpstreamAttempt

    rows = list(AuditRecord.objects.values()) + list(UpstreamAttempt.objects.values())
    return "\n".join(map(str, rows))


def test_no_secret_reaches_anything_anyone_can_read(canary_gateway, upstream, make_actor):
    gateway = canary_gateway
    actor = make_actor("canary")
    # A second token fetch through the served gateway, at DEBUG.
    assert fetch_token(gateway.url, actor.client_id, actor.client_secret).status_code == 200
    canaries = {
        "the stored provider key": DB_KEY,
        "the env provider key": ENV_KEY,
        "the client secret": actor.client_secret,
        "the bearer token": actor.token,
    }
    seen: list[tuple[str, str]] = []
    stream_ids: list[str] = []
    for model in routes(upstream):
        texts, ids = drive(gateway, actor, model)
        seen += [(f"a response for {model}", text) for text in texts]
        stream_ids += ids
    for stream_id in stream_ids:
        wait_for_audit(stream_id)
    # The upstream really was sent both keys (the canaries were in play).
    sent = " ".join(str(r.headers) for r in upstream.requests)
    assert DB_KEY in sent and ENV_KEY in sent

    seen += list(admin_pages(gateway, stream_ids))
    seen.append(("sluice_config export", config_export(gateway)))
    seen.append(("/metrics", httpx.get(f"{gateway.url}/metrics", timeout=10).text))
    seen.append(("the audit tables", audit_rows()))
    seen += list(redis_values())
    seen.append(("the gateway log", gateway.log_path.read_text(errors="replace")))

    leaks = [
        f"{name} in {where}"
        for where, text in seen
        for name, canary in canaries.items()
        if canary in text
    ]
    assert not leaks, "\n".join(leaks)
