"""Nothing lost when a gateway dies: write-ahead records, completed as ``interrupted``.

Runs on PostgreSQL + Redis (the transcript so far comes from the Redis
stream log) and on SQLite without Redis (the request only).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit.models import AuditRecord, GatewayInstance
from gateway.redis import redis_enabled
from tests.conftest import Actor, scripted_route, wait_for_audit
from tests.live import GatewayServer, server_env

STREAMS = 4


class HeldStream:
    """A streaming chat request read up to a few tokens, then held open."""

    def __init__(self, server: GatewayServer, actor: Actor, model: str, prompt: str) -> None:
        self.ready = threading.Event()
        self.stream_id = ""
        self.text = ""
        self._args = (server, actor, model, prompt)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        server, actor, model, prompt = self._args
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
        try:
            with httpx.stream(
                "POST", f"{server.url}/v1/chat/completions", json=body,
                headers=actor.headers, timeout=60,
            ) as response:  # fmt: skip
                self.stream_id = response.headers["x-sluice-stream-id"]
                for line in response.iter_lines():
                    if '"content"' in line:
                        self.text += line.split('"content":"', 1)[1].split('"', 1)[0]
                    if self.text.count(" ") >= 3:
                        self.ready.set()
        except httpx.HTTPError:
            pass  # the gateway was killed under it
        finally:
            self.ready.set()

    def join(self) -> None:
        self._thread.join(10)


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    return tmp_path


def own_server(var_dir: Path, **overrides: str) -> GatewayServer:
    return GatewayServer(
        env=server_env(
            SLUICE_VAR_DIR=str(var_dir),
            SLUICE_AUDIT_SPOOL_DIR=str(var_dir / "spool"),
            SLUICE_STREAM_ABANDON_SECONDS="30",
            **overrides,
        )
    ).start()


@pytest.fixture
def doomed(gateway: GatewayServer, var_dir: Path) -> Iterator[GatewayServer]:
    server = own_server(var_dir)
    yield server
    server.stop()


def slow_model(make_route: Any, upstream: Any) -> str:
    model, _ = scripted_route(make_route, upstream, "openai", tokens=400, delay=0.05)
    return model


def test_a_running_request_has_its_record_written_ahead(doomed, alice, make_route, upstream):
    held = HeldStream(doomed, alice, slow_model(make_route, upstream), "Count slowly.")
    assert held.ready.wait(15) and held.stream_id

    record = wait_for_audit(held.stream_id, final=False)
    assert record.outcome == "in_progress"
    assert record.request_messages == [{"role": "user", "content": "Count slowly."}]
    assert record.instance and record.ended_at is None
    assert GatewayInstance.objects.filter(name=record.instance).exists()  # its heartbeat
    doomed.stop()
    held.join()


def test_requests_in_flight_on_a_killed_gateway_are_completed_as_interrupted(
    doomed, alice, make_route, upstream, var_dir
):
    model = slow_model(make_route, upstream)
    held = [HeldStream(doomed, alice, model, f"Count slowly, {i}.") for i in range(STREAMS)]
    for stream in held:
        assert stream.ready.wait(15) and stream.stream_id
    records = [wait_for_audit(s.stream_id, final=False) for s in held]
    assert {r.outcome for r in records} == {"in_progress"}
    dead_name = records[0].instance
    read = [stream.text.strip() for stream in held]  # what the clients had, at least
    time.sleep(0.3)  # the Redis mirror's next batch

    assert doomed.process is not None
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(10)
    for stream in held:
        stream.join()
    assert {
        r.outcome for r in AuditRecord.objects.filter(request_id__in=[s.stream_id for s in held])
    } == {"in_progress"}

    # The next start (same host: the dead pid tells at once) completes them.
    successor = own_server(var_dir)
    try:
        for stream, ahead, before in zip(held, records, read, strict=True):
            record = wait_for_audit(stream.stream_id, timeout=30)
            assert record.outcome == "interrupted"
            assert record.error_class == "instance_lost"
            assert record.instance == dead_name and dead_name in record.error_message
            assert record.request_messages == ahead.request_messages
            assert record.ended_at is not None and record.duration_ms > 0
            if redis_enabled():
                # The transcript so far: at least what the client had read before the kill.
                assert before and record.response_text.startswith(before)
            else:
                assert record.response_text == ""
        ids = [s.stream_id for s in held]
        assert AuditRecord.objects.filter(request_id__in=ids).count() == STREAMS
    finally:
        successor.stop()


def test_an_interrupted_record_is_redacted_as_any_other(
    doomed, make_actor, make_route, upstream, var_dir
):
    """The sweeper completes the record with the transcript kept in Redis: the
    app's redaction applies to it too, and the request's count is kept (it was
    reset to 0 and the answer so far stored as generated)."""
    from accounts.models import AppPolicy

    carol = make_actor("carol")
    AppPolicy.objects.filter(application_id=carol.app_id).update(redact_emails=True)
    answer = ["write ", "to ", "carol@example.com ", "or ", "to ", "dan@example.org "]
    model, _ = scripted_route(
        make_route, upstream, "openai", tokens=answer + ["more "] * 300, delay=0.05
    )
    held = HeldStream(doomed, carol, model, "I am carol@example.com.")
    assert held.ready.wait(15) and held.stream_id
    wait_for_audit(held.stream_id, final=False)
    deadline = time.monotonic() + 10
    while "dan@example.org" not in held.text and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the Redis mirror's next batch
    assert doomed.process is not None
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(10)
    held.join()

    # No takeover: the sweeper completes it (with Redis, from the log it kept).
    successor = own_server(var_dir, SLUICE_TAKEOVER_SECONDS="0")
    try:
        record = wait_for_audit(held.stream_id, timeout=30)
    finally:
        successor.stop()
    assert record.outcome == "interrupted"
    stored = str(record.request_messages) + record.response_text
    assert "@example" not in stored
    assert record.request_messages == [{"role": "user", "content": "I am [REDACTED:email]."}]
    if redis_enabled():
        assert record.response_text.startswith("write to [REDACTED:email] or to [REDACTED:email]")
        assert record.redactions == 3
    else:
        assert record.redactions == 1


def test_when_an_instance_counts_as_dead() -> None:
    from audit.instance import HOST
    from audit.instances import InstanceSeen
    from streaming.core.recovery import is_dead, process_started_at

    now = time.time()
    ours = process_started_at(os.getpid())
    assert ours is not None and ours <= now

    def dead(seen: InstanceSeen, healthy_for: float = 60.0) -> bool:
        return is_dead(seen, now=now, healthy_for=healthy_for, dead_after=30.0)

    # This host: its process alone tells, at once, whatever the heartbeat says.
    alive = InstanceSeen("a", host=HOST, pid=os.getpid(), started_at=ours, last_seen=now - 999)
    assert not dead(alive)
    gone = subprocess_pid_gone()
    assert dead(InstanceSeen("b", host=HOST, pid=gone, started_at=now - 5, last_seen=now))
    # The pid is alive but started after the instance did: someone else's now.
    assert dead(InstanceSeen("c", host=HOST, pid=os.getpid(), started_at=ours - 3600))
    # Never sent a heartbeat, named for a process of this host that is gone.
    assert dead(InstanceSeen(f"{HOST}:{gone}:abc", oldest_open=now))
    # Elsewhere: a stale heartbeat, but only once our own have succeeded as long.
    stale = InstanceSeen("d", host="elsewhere", pid=1, started_at=now - 99, last_seen=now - 31)
    assert dead(stale)
    assert not dead(stale, healthy_for=10.0)  # we may be the ones who lost the database
    fresh = InstanceSeen("e", host="elsewhere", pid=1, started_at=now - 99, last_seen=now - 5)
    assert not dead(fresh)


def subprocess_pid_gone() -> int:
    """The pid of a process that has ended."""
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid
