"""The served gateway stores its audit from a child process on idle CPU time.

Real gateway processes (``sluice_serve``), real streams, the test database:
the child is found through /proc, killed, and the gateway is stopped, to
check that what the audit accepted is stored all the same.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit.models import AuditRecord
from audit.process import AuditWriteFailed, ProcessWrite
from bench.stack import children
from tests.audit.conftest import make_entry
from tests.conftest import Actor, wait_for_audit
from tests.live import GatewayServer, database_url, server_env

pytestmark = [pytest.mark.timeout(90), pytest.mark.django_db(transaction=True)]

SCHED_IDLE = 5


def spawned_children(pid: int) -> list[int]:
    """Processes started by multiprocessing's spawn from ``pid`` (not its resource tracker)."""
    found = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue  # ended in between
    return found


def audit_process(gateway: GatewayServer, timeout: float = 10.0) -> int:
    assert gateway.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = spawned_children(gateway.process.pid)
        if kids:
            (pid,) = kids
            return pid
        time.sleep(0.05)
    raise AssertionError("the gateway has no audit process")


def thread_policies(pid: int) -> list[int]:
    """The scheduling policy of each of a process's threads (field 41 of stat)."""
    policies = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        policies.append(int(fields[38]))
    return policies


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stream(gateway: GatewayServer, actor: Actor, model: str, text: str) -> str:
    """One streamed chat; returns its request id once the stream ended."""
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers=actor.headers,
        json={"model": model, "messages": [{"role": "user", "content": text}], "stream": True},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        body = response.read()
    assert b"[DONE]" in body
    return response.headers["x-sluice-stream-id"]


@pytest.fixture
def own_gateway(gateway: GatewayServer) -> Iterator[GatewayServer]:
    """A gateway of this test's own, to kill parts of (tokens come from the shared one)."""
    server = GatewayServer(env=server_env()).start()
    yield server
    server.stop()


def test_audit_records_are_stored_by_an_idle_priority_child(own_gateway, alice, demo_model):
    request_id = stream(own_gateway, alice, demo_model, "Name a river.")

    record = wait_for_audit(request_id)
    assert record.outcome == "completed"
    assert record.request_messages == [{"role": "user", "content": "Name a river."}]
    child = audit_process(own_gateway)
    # The thread that stored the record runs only on CPU nobody else wants.
    assert SCHED_IDLE in thread_policies(child)


def test_a_killed_audit_process_is_replaced_and_nothing_is_lost(own_gateway, alice, demo_model):
    wait_for_audit(stream(own_gateway, alice, demo_model, "first"))
    first = audit_process(own_gateway)

    os.kill(first, signal.SIGKILL)
    request_ids = [stream(own_gateway, alice, demo_model, f"after {i}") for i in range(3)]

    for request_id in request_ids:
        assert wait_for_audit(request_id, timeout=20).outcome == "completed"
    second = audit_process(own_gateway)
    assert second != first
    log = own_gateway.log_path.read_text()
    assert f"audit writer process {second} started" in log
    assert "lost" not in log


def test_stopping_the_gateway_stores_what_it_accepted_and_ends_the_child(
    own_gateway, alice, demo_model
):
    request_ids = [stream(own_gateway, alice, demo_model, f"last words {i}") for i in range(5)]
    child = audit_process(own_gateway)

    own_gateway.stop()  # SIGTERM, as a service manager stops it

    assert "Application shutdown complete" in own_gateway.log_text()
    for request_id in request_ids:
        wait_for_audit(request_id, timeout=1)
    assert not alive(child)


@pytest.fixture
def process_write(monkeypatch) -> Iterator[ProcessWrite]:
    """The write function the served gateway uses, its child on the test database."""
    monkeypatch.setenv("DATABASE_URL", database_url())
    write = ProcessWrite(urgent_backlog=3)
    yield write
    write.close()


def test_a_batch_is_stored_at_normal_priority_only_when_the_writer_is_behind(
    process_write, live_db
):
    # A full batch more queued behind this one: the writer is behind, and
    # must not wait for idle CPU (a busy machine would starve the audit).
    process_write([make_entry("chatcmpl-behind")], 3)
    assert AuditRecord.objects.filter(request_id="chatcmpl-behind").exists()
    assert process_write.pid is not None
    # The idle thread never ran (the main thread and the spool's replay thread did).
    assert SCHED_IDLE not in thread_policies(process_write.pid)

    # A full batch alone is just a busy gateway: it waits for idle CPU.
    process_write([process_write.encode(make_entry(f"chatcmpl-busy-{i}")) for i in range(3)], 0)
    assert AuditRecord.objects.filter(request_id__startswith="chatcmpl-busy-").count() == 3
    assert SCHED_IDLE in thread_policies(process_write.pid)


def test_a_batch_the_child_cannot_store_fails_with_the_error_class_only(process_write, live_db):
    secret = "my card number is 4111"
    poisoned = make_entry("chatcmpl-poison", response_text=secret, usage={"odd": {1, 2}})

    with pytest.raises(AuditWriteFailed) as failed:
        process_write([poisoned])

    assert str(failed.value) == "TypeError"  # a set is not JSON; the text is not in the error
    process_write([make_entry("chatcmpl-next")])  # the child carries on
    assert AuditRecord.objects.filter(request_id="chatcmpl-next").exists()
    assert not AuditRecord.objects.filter(request_id="chatcmpl-poison").exists()
