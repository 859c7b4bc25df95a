"""PostgreSQL stopped for 30 s under a served gateway: nothing lost, nothing doubled, no 500.

The gateway runs on a private cluster (``tests.audit.pgcluster``), so
stopping it disturbs no other test. 50 slow streams run across the outage
(half end during it, half after); new streams start during it on the
cached token and route; a request that needs the database (a token never
seen) gets a 503. Once PostgreSQL is back, the spool drains and every
request has exactly one complete record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from audit.spool import SUFFIX, decode_entry
from tests.audit.pgcluster import PrivateCluster
from tests.conftest import fetch_token, unique
from tests.live import ROOT, GatewayServer, server_env

RUNNING = 50
OUTAGE_SECONDS = 30.0

SETUP = """
import json, django
django.setup()
from accounts.services import app_create
from streaming.models import ModelRoute, Provider, RouteTarget
app, secret = app_create(name="alice-outage", scopes=["chat"])
provider = Provider(name="fake-openai", kind="openai", base_url={base_url!r})
provider.set_api_key("sk-up")
provider.save()
for model, upstream_model in {routes!r}.items():
    route = ModelRoute.objects.create(model=model)
    RouteTarget.objects.create(route=route, provider=provider, upstream_model=upstream_model)
print(json.dumps({{"client_id": app.client_id, "secret": secret}}))
"""


class Stream:
    """One streaming request, read to its end in a thread of its own."""

    def __init__(self, url: str, token: str, model: str) -> None:
        self.status = 0
        self.stream_id = ""
        self.text = ""
        self.error = ""
        self.done = threading.Event()
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "Hi."}]}
        self._args = (url, token, body)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        url, token, body = self._args
        headers = {"Authorization": f"Bearer {token}"}
        try:
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120
            ) as response:
                self.status = response.status_code
                self.stream_id = response.headers.get("x-sluice-stream-id", "")
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:]).get("choices") or ():
                            self.text += (choice.get("delta") or {}).get("content") or ""
        except httpx.HTTPError as error:
            self.error = type(error).__name__
        finally:
            self.done.set()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    root = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
    made = PrivateCluster(root).create()
    yield made
    made.destroy()


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def serve(cluster: PrivateCluster, tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    """Start a gateway on a new database of the private cluster (migrated first)."""
    servers: list[GatewayServer] = []

    def make(*, successor_of: GatewayServer | None = None, **overrides: str) -> GatewayServer:
        """A gateway on a new database, or with ``successor_of``, on that one's."""
        if successor_of is not None:
            server = GatewayServer(env={**successor_of.env, **overrides}).start()
            servers.append(server)
            return server
        database = unique("sluice").replace("-", "_")
        env = server_env(
            DATABASE_URL=cluster.createdb(database),
            SLUICE_VAR_DIR=str(tmp_path),
            SLUICE_AUDIT_SPOOL_DIR=str(tmp_path / "spool"),
            # Short enough to expire during the outage: served stale, not lost.
            SLUICE_CONFIG_CACHE_SECONDS="2",
            SLUICE_TOKEN_CACHE_SECONDS="2",
            SLUICE_STREAM_ABANDON_SECONDS="60",
            # A Redis database of their own: the other tests' gateways, alive on
            # the shared one with takeover on, must not claim these gateways'
            # streams (they cannot carry them on: another PostgreSQL).
            **_own_redis(),
            **overrides,
        )
        _manage(env, "manage.py", "migrate", "-v0")
        server = GatewayServer(env=env).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _own_redis() -> dict[str, str]:
    url = os.environ.get("REDIS_URL", "")
    return {"REDIS_URL": url.rsplit("/", 1)[0] + "/13"} if url else {}


def _app(served: GatewayServer, upstream: Any, routes: dict[str, str]) -> dict[str, str]:
    """An app (its client id and secret) and routes to the fake upstream, made in
    the private cluster by a process of its own (this one is on the test database)."""
    script = SETUP.format(base_url=upstream.base_url, routes=routes)
    return json.loads(_manage(served.env, "-c", script).strip().splitlines()[-1])


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("sluice_audit_")
    }


def _websocket_close(server: GatewayServer, token: str) -> int | None:
    """The close code a WebSocket gets at its handshake with ``token``."""
    url = server.url.replace("http", "ws", 1) + "/v1/ws"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as socket:
            socket.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    return None


def _records(url: str) -> dict[str, tuple[str, str, int]]:
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute(
            "SELECT request_id, outcome, response_text FROM audit_auditrecord"
        ).fetchall()
    counts: dict[str, int] = {}
    for request_id, _, _ in rows:
        counts[request_id] = counts.get(request_id, 0) + 1
    return {rid: (outcome, text, counts[rid]) for rid, outcome, text in rows}


def _spooled(directory: Path) -> dict[str, str]:
    """Each request id in the spools under ``directory``, with its latest outcome."""
    found: dict[str, str] = {}
    for path in sorted(directory.glob("*" + SUFFIX)):
        for line in path.read_bytes().splitlines(keepends=True):
            if line.endswith(b"\n"):  # a whole line: fsync'd with its batch
                entry = decode_entry(line)
                found[entry.request_id] = entry.outcome
    return found


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def test_postgres_stopped_for_30s_loses_nothing_and_serves_no_500(cluster, serve, upstream) -> None:  # type: ignore[no-untyped-def]
    served = serve()
    # Half the running streams end during the outage, half after it.
    short, long = unique("short"), unique("long")
    upstream.script(short, tokens=40, delay=0.35)
    upstream.script(long, tokens=60, delay=0.75)
    app = _app(served, upstream, {"outage-short": short, "outage-long": long})
    token_reply = fetch_token(served.url, app["client_id"], app["secret"])
    assert token_reply.status_code == 200, token_reply.text
    token = token_reply.json()["access_token"]
    quick = Stream(served.url, token, "outage-short")  # token and route now cached
    assert quick.done.wait(60) and quick.status == 200, quick.error

    running = [
        Stream(served.url, token, "outage-short" if i % 2 else "outage-long")
        for i in range(RUNNING)
    ]
    _wait(lambda: all(s.stream_id for s in running), 30, "streams did not start")
    time.sleep(1.0)

    cluster.stop()
    stopped_at = time.monotonic()
    started_during: list[Stream] = []
    unknown_token = messages = oauth = socket_close = None
    while time.monotonic() - stopped_at < OUTAGE_SECONDS:
        started_during.append(Stream(served.url, token, "outage-short"))
        if unknown_token is None and time.monotonic() - stopped_at > 3:
            unknown_token = httpx.post(
                f"{served.url}/v1/chat/completions",
                json={"model": "outage-short", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": "Bearer never-seen-before"},
                timeout=30,
            )
            messages = httpx.post(
                f"{served.url}/v1/messages",
                json={"model": "outage-short", "max_tokens": 5, "messages": [
                    {"role": "user", "content": "x"}
                ]},
                headers={"x-api-key": "never-seen-either", "anthropic-version": "2023-06-01"},
                timeout=30,
            )  # fmt: skip
            oauth = fetch_token(served.url, app["client_id"], app["secret"])
            socket_close = _websocket_close(served, "never-seen-on-a-socket")
        time.sleep(1.5)
    during = _metrics(served.url)
    cluster.start()

    everything = [quick, *running, *started_during]
    _wait(lambda: all(s.done.is_set() for s in everything), 120, "streams did not end")

    # Needing the database and not getting it: 503 with a clear message, never a 500.
    assert unknown_token is not None and unknown_token.status_code == 503, unknown_token.text
    assert unknown_token.json()["error"]["code"] == "database_unavailable"
    assert messages is not None and messages.status_code == 503, messages.text
    assert messages.json()["type"] == "error"  # Anthropic's shape on /v1/messages
    assert "database" in messages.json()["error"]["message"]
    assert oauth is not None and oauth.status_code == 503, oauth.text
    assert socket_close == 1013  # WebSocket's "try again later"
    assert oauth.json()["error"] == "temporarily_unavailable"
    # Everything else flowed, start to end, on the cached token and route.
    assert [(s.status, s.error) for s in everything] == [(200, "")] * len(everything)
    assert during["sluice_audit_spool_records"] > 0 and during["sluice_audit_spool_bytes"] > 0

    expected = {s.stream_id: s.text for s in everything}
    assert all(expected.values())

    def complete() -> bool:
        records = _records(served.env["DATABASE_URL"])
        return all(records.get(rid, ("",))[0] == "completed" for rid in expected)

    _wait(complete, 60, "records were not completed after the outage")
    records = _records(served.env["DATABASE_URL"])
    for rid, text in expected.items():
        assert records[rid] == ("completed", text, 1), rid
    assert len(records) == len(expected)  # nothing else, nothing doubled
    _wait(lambda: _metrics(served.url)["sluice_audit_spool_records"] == 0, 30, "spool not drained")
    after = _metrics(served.url)
    assert after["sluice_audit_spool_bytes"] == 0 and after["sluice_audit_spool_full"] == 0
    assert after["sluice_audit_spool_replayed_total"] > 0
    assert after["sluice_audit_spool_lost_total"] == 0
    assert "500 Internal" not in served.log_path.read_text()


def _chat(server: GatewayServer, token: str) -> httpx.Response:
    body = {"model": "outage-short", "messages": [{"role": "user", "content": "Hi."}]}
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("policy", ["refuse", "drop"])
def test_a_full_spool_raises_the_alarm_then_refuses_or_drops(
    cluster, serve, upstream, policy
) -> None:  # type: ignore[no-untyped-def]
    quick = unique("quick")
    upstream.script(quick, tokens=3)
    # Room for a few records only.
    server = serve(SLUICE_AUDIT_SPOOL_MAX_BYTES="6000", SLUICE_AUDIT_SPOOL_FULL=policy)
    app = _app(server, upstream, {"outage-short": quick})
    token = fetch_token(server.url, app["client_id"], app["secret"]).json()["access_token"]
    assert _chat(server, token).status_code == 200

    cluster.stop()
    try:
        replies = []
        for _ in range(30):
            replies.append(_chat(server, token))
            if replies[-1].status_code != 200:
                break
            time.sleep(0.4)  # the writer's batch, spooled
        full = _metrics(server.url)
    finally:
        cluster.start()

    assert full["sluice_audit_spool_full"] == 1 and full["sluice_audit_spool_lost_total"] > 0
    assert "AUDIT RECORDS LOST: the audit spool is full" in server.log_path.read_text()
    if policy == "refuse":
        refused = replies[-1]
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "audit_unavailable"
        assert "audit spool is full" in refused.json()["error"]["message"]
        # The database back, the spool drains and requests are accepted again.
        _wait(lambda: _metrics(server.url)["sluice_audit_spool_full"] == 0, 30, "still full")
        assert _chat(server, token).status_code == 200
    else:
        assert [r.status_code for r in replies] == [200] * len(replies) == [200] * 30
    assert not any(r.status_code == 500 for r in replies)


def test_a_gateway_killed_during_the_outage_leaves_its_spool_to_its_successor(
    cluster, serve, upstream
) -> None:  # type: ignore[no-untyped-def]
    quick, slow = unique("quick"), unique("slow")
    upstream.script(quick, tokens=5)
    upstream.script(slow, tokens=400, delay=0.05)
    doomed = serve()
    app = _app(doomed, upstream, {"outage-short": quick, "outage-long": slow})
    token = fetch_token(doomed.url, app["client_id"], app["secret"]).json()["access_token"]
    assert _chat(doomed, token).status_code == 200  # token and routes cached
    warm = Stream(doomed.url, token, "outage-long")
    _wait(lambda: bool(warm.text), 30, "the slow route did not answer")

    cluster.stop()
    try:
        finished = [_chat(doomed, token) for _ in range(5)]
        assert [r.status_code for r in finished] == [200] * 5
        in_flight = [Stream(doomed.url, token, "outage-long") for _ in range(3)]
        _wait(lambda: all(s.text for s in in_flight), 30, "streams did not start")
        spool = Path(doomed.env["SLUICE_AUDIT_SPOOL_DIR"])

        def spooled() -> bool:  # what the test expects after the kill is on disk
            entries = _spooled(spool)
            return all(entries.get(r.json()["id"]) == "completed" for r in finished) and all(
                s.stream_id in entries for s in in_flight
            )

        # Not a count of entries: a busy machine may still hold the warm-up's
        # entries in its queue, and a count met by them let a write-ahead die
        # with the process (CI, stop 28).
        _wait(spooled, 30, f"the write-aheads were not spooled: {_spooled(spool)}")
        assert doomed.process is not None
        doomed.process.kill()  # SIGKILL, with everything above only in its spool
        doomed.process.wait(10)
    finally:
        cluster.start()

    successor = serve(successor_of=doomed)
    expected = {r.json()["id"]: "completed" for r in finished}
    expected.update({s.stream_id: "interrupted" for s in [warm, *in_flight]})

    def settled() -> bool:
        records = _records(successor.env["DATABASE_URL"])
        return all(records.get(rid, ("",))[0] == outcome for rid, outcome in expected.items())

    # Adopted and replayed, then the dead instance's write-aheads completed.
    try:
        _wait(settled, 60, "the dead instance's spool was not replayed")
    except AssertionError:
        records = _records(successor.env["DATABASE_URL"])
        found = {rid: records.get(rid, ("missing",))[0] for rid in expected}
        log = successor.log_text()
        raise AssertionError(f"expected {expected}, found {found}:\n{log}") from None
    records = _records(successor.env["DATABASE_URL"])
    for reply in finished:
        text = reply.json()["choices"][0]["message"]["content"]
        assert records[reply.json()["id"]] == ("completed", text, 1)
    spool_files = list((Path(doomed.env["SLUICE_AUDIT_SPOOL_DIR"])).glob("*.jsonl"))
    assert all(f.stat().st_size == 0 for f in spool_files)  # the dead one's is gone
