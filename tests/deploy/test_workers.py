"""``sluice_serve --workers N``: several worker processes on one port, as one gateway.

Which worker served a connection is read from the kernel (tests/deploy/workers.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

import httpx
import pytest

from streaming.management.commands.sluice_serve import cgroup_cpu_quota, usable_cores
from streaming.observability.multiproc import ENV, multiprocess_dir
from tests.conftest import unique, wait_for_audit
from tests.deploy.workers import (
    audit_children,
    burst,
    client_on,
    worker_serving,
    workers_of,
)
from tests.live import ROOT, GatewayServer, server_env
from tests.metrics.conftest import Scrape
from tests.streams.clients import Progress, read_sse

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL (CI sets it)")
pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
TOKENS = [f"w{i} " for i in range(60)]


# -- clients -----------------------------------------------------------------------
@contextmanager
def open_stream(server: GatewayServer, actor, model: str) -> Iterator[tuple[httpx.Response, int]]:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        headers=actor.headers,
        json={**CHAT, "model": model},
        timeout=20,
    ) as response:
        assert response.status_code == 200, response.read()
        yield response, worker_serving(server, response)


def stream_once(server: GatewayServer, actor, model: str) -> int:
    """One stream on a new connection, read to its end; the worker that served it."""
    with open_stream(server, actor, model) as (response, worker):
        assert list(response.iter_lines())[-2] == "data: [DONE]"
    return worker


def scrape_from(server: GatewayServer) -> tuple[Scrape, int]:
    """/metrics on a new connection, and which worker answered."""
    with httpx.stream("GET", f"{server.url}/metrics", timeout=10) as response:
        worker = worker_serving(server, response)
        assert response.status_code == 200
        return Scrape(response.read().decode()), worker


def scrape_until(server: GatewayServer, check, timeout: float = 10.0) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        result, _ = scrape_from(server)
        if check(result):
            return result
        assert time.monotonic() < deadline, "metrics did not get there in time"
        time.sleep(0.1)


def until_both(served: set[int], workers: list[int], attempt, tries: int = 40) -> None:
    """Call ``attempt()`` (which returns the worker it reached) until every worker
    has been reached: the kernel, not the test, picks the worker of a connection."""
    for _ in range(tries):
        served.add(attempt())
        if served >= set(workers):
            return
    raise AssertionError(f"{tries} connections all reached {served} of {workers}")


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(django_db_setup) -> Iterator[GatewayServer]:
    """One gateway, two workers, on Redis and PostgreSQL."""
    env = server_env(REDIS_URL=REDIS_URL, SLUICE_DEMO_TOKEN_DELAY="0.005")
    server = GatewayServer(env=env, workers=2).start()
    deadline = time.monotonic() + 30
    while len(workers_of(server)) < 2 or not all(map(audit_children, workers_of(server))):
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.2)
    yield server
    server.stop()


@pytest.fixture
def slow_model(upstream, make_route) -> str:
    upstream_model = unique("workers")
    upstream.script(upstream_model, tokens=TOKENS, delay=0.05)
    return make_route(("openai", upstream.base_url, upstream_model))


# -- tests -------------------------------------------------------------------------
@needs_redis
def test_each_worker_serves_streams_and_metrics_add_up(pair, alice, demo_model):
    workers = workers_of(pair)
    assert len(workers) == 2
    served: set[int] = set()
    count = 0

    def attempt() -> int:
        nonlocal count
        count += 1
        return stream_once(pair, alice, demo_model)

    until_both(served, workers, attempt)

    # Whichever worker answers a scrape reports every worker's streams.
    answered: set[int] = set()

    def scrape_attempt() -> int:
        result = scrape_until(
            pair,
            lambda s: s.value("sluice_stream_duration_seconds_count", route=demo_model) == count,
        )
        started = result.value("sluice_streams_started_total", route=demo_model, transport="sse")
        assert started == count
        assert result.value("sluice_streams_active") == 0
        _, worker = scrape_from(pair)
        return worker

    until_both(answered, workers, scrape_attempt)


@needs_redis
def test_bursts_of_connections_are_spread_over_the_workers(pair):
    """100 connections opened at once, 5 times: each worker accepts a fair share
    every time (at random, fewer than 30 of 100 would happen once in 30,000).
    On one shared listening socket the first worker awake took 70 to 92 of a
    burst in about 1 burst of 4."""
    workers = workers_of(pair)
    bursts = []
    for _ in range(5):
        bursts.append(burst(pair, workers))
        time.sleep(0.5)
    assert all(sum(counts.values()) == 100 for counts in bursts), bursts
    assert min(min(counts.values()) for counts in bursts) >= 30, bursts


@needs_redis
def test_each_worker_has_its_own_audit_process_and_the_queue_gauge_adds_up(pair, alice, demo_model):
    """Each worker stores its audit records through a child of its own. With both
    children stopped, every worker's first record waits in flight and the others
    in its queue: /metrics shows the sum of both queues."""
    workers = workers_of(pair)
    children = {worker: audit_children(worker) for worker in workers}
    assert all(len(found) == 1 for found in children.values()), children
    written = scrape_until(pair, lambda s: True).value("sluice_audit_records_written_total")
    stopped = [found[0] for found in children.values()]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        served: list[int] = []

        def attempt() -> int:
            served.append(stream_once(pair, alice, demo_model))
            time.sleep(0.4)  # the writer has taken what was queued (every 0.25 s)
            return served[-1]

        until_both(set(), workers, attempt)
        for _ in range(4):
            attempt()
        # Each stream queues a write-ahead and its final entry; each worker has
        # at most one batch in flight with its stopped child. Only the sum over
        # both workers' queues reaches this once both have served.
        queued = len(served) - 2
        scrape_until(pair, lambda s: s.value("sluice_audit_queue_depth") >= queued)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    scrape_until(
        pair,
        lambda s: (
            s.value("sluice_audit_records_written_total") >= written + len(served)
            and s.value("sluice_audit_queue_depth") == 0
        ),
    )


@needs_redis
def test_a_stream_started_on_one_worker_resumes_on_the_other(pair, alice, slow_model):
    progress = Progress()
    with open_stream(pair, alice, slow_model) as (response, producer):
        progress.stream_id = response.headers["x-sluice-stream-id"]
        read_sse(response, progress, stop_after=3)
    other = next(worker for worker in workers_of(pair) if worker != producer)
    reached: list[int] = []

    def resume() -> int:
        """Resume from the cursor: on the producer read one event and hang up
        (the kernel picks the next connection's worker), else read to the end."""
        with httpx.stream(
            "GET",
            f"{pair.url}/v1/streams/{progress.stream_id}",
            headers={**alice.headers, "Last-Event-ID": str(progress.cursor)},
            timeout=20,
        ) as response:
            assert response.status_code == 200, response.read()
            reached.append(worker_serving(pair, response))
            read_sse(response, progress, stop_after=1 if reached[-1] == producer else None)
        return reached[-1]

    until_both({producer}, [producer, other], resume)

    assert progress.done, reached
    assert progress.content == "".join(TOKENS)
    assert progress.seqs == list(range(1, len(progress.seqs) + 1))
    assert other in reached


@needs_redis
def test_revocations_and_cancels_reach_every_worker(pair, alice, bob, upstream, make_route):
    """Each worker runs its own revocation and cancel listeners: a revocation
    handled by one worker ends the streams on both; a DELETE sent to one worker
    cancels the stream another one generates."""
    upstream_model = unique("long")
    upstream.script(upstream_model, tokens=[f"x{i} " for i in range(600)], delay=0.05)
    model = make_route(("openai", upstream.base_url, upstream_model))
    workers = workers_of(pair)
    with ExitStack() as stack:
        held: dict[int, list[httpx.Response]] = {}
        for _ in range(40):
            response, worker = stack.enter_context(open_stream(pair, alice, model))
            held.setdefault(worker, []).append(response)
            if set(held) == set(workers):
                break
        assert set(held) == set(workers), held
        bobs, producer = stack.enter_context(open_stream(pair, bob, model))
        stream_id = bobs.headers["x-sluice-stream-id"]
        other = next(worker for worker in workers if worker != producer)
        client = stack.enter_context(closing(client_on(pair, other)))
        revoked = client.post(
            "/o/revoke_token/",
            data={"token": alice.token},
            auth=(alice.client_id, alice.client_secret),
        )
        cancelled = client.delete(f"/v1/streams/{stream_id}", headers=bob.headers)
        assert revoked.status_code == 200, revoked.text
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
        for response in [r for responses in held.values() for r in responses]:
            last = [line for line in response.iter_lines() if line][-2:]
            assert json.loads(last[0].removeprefix("data: "))["error"]["code"] == "token_revoked"
            assert last[1] == "data: [DONE]"
    assert wait_for_audit(stream_id).outcome == "cancelled"


@needs_redis
def test_a_killed_worker_is_replaced_and_its_live_gauges_leave_the_sums(pair, alice, slow_model):
    """Last in this module: it replaces one of the fixture's workers."""
    with open_stream(pair, alice, slow_model) as (response, worker):
        next(response.iter_lines())
        scrape_until(pair, lambda s: s.value("sluice_streams_active", transport="sse") == 1)
        os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not (len(workers_of(pair)) == 2 and worker not in workers_of(pair)):
        assert time.monotonic() < deadline, pair.log_text()
        time.sleep(0.2)
    # Without the supervisor marking it dead, its file kept saying 1 forever.
    scrape_until(pair, lambda s: s.value("sluice_streams_active", transport="sse") == 0)
    assert stream_once(pair, alice, slow_model) in workers_of(pair)


@needs_redis
def test_the_default_is_one_worker_per_usable_core_with_redis(live_db):
    server = GatewayServer(env=server_env(REDIS_URL=REDIS_URL), workers=None).start()
    try:
        deadline = time.monotonic() + 30
        while len(workers_of(server)) < usable_cores():
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.2)
        assert len(workers_of(server)) == usable_cores()
        assert server.process is not None
        metrics_dirs = Path(server.env["SLUICE_VAR_DIR"], "prometheus")
        directory = next(metrics_dirs.glob(f"{server.process.pid}-*"))
        assert {path.name for path in directory.iterdir()} >= {
            f"gauge_livesum_{pid}.db" for pid in workers_of(server)
        }
    finally:
        server.stop()
    assert not directory.exists()  # the command removes its metrics files at exit


def test_the_default_is_one_process_without_redis(live_db):
    env = {k: v for k, v in server_env().items() if k != "REDIS_URL"}
    server = GatewayServer(env=env, workers=None).start()
    try:
        assert workers_of(server) == []  # the command's own process serves
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


def test_several_workers_without_redis_are_refused(tmp_path):
    env = {k: v for k, v in server_env().items() if k != "REDIS_URL"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    done = subprocess.run(
        [sys.executable, "manage.py", "sluice_serve", "--workers", "2", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "--workers > 1 needs REDIS_URL" in done.stderr.decode()
    assert "resume" in done.stderr.decode()


def test_a_cgroup_cpu_quota_caps_the_workers(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_the_metrics_directory_is_fresh_and_removed(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    parent = tmp_path / "prometheus"
    parent.mkdir()
    gone = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    (parent / f"{gone}-old").mkdir()  # a killed run's
    (parent / "1-live").mkdir()  # a running instance's (pid 1 runs)

    with multiprocess_dir(tmp_path) as directory:
        assert os.environ[ENV] == str(directory) and not any(directory.iterdir())
        assert sorted(p.name for p in parent.iterdir()) == sorted(["1-live", directory.name])

    assert not directory.exists() and ENV not in os.environ
    monkeypatch.setenv(ENV, str(tmp_path / "mine"))
    with multiprocess_dir(tmp_path) as directory:  # the operator's: used as it is
        assert directory == tmp_path / "mine"
    assert os.environ[ENV] == str(tmp_path / "mine")
