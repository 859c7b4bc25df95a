"""The README's EventSource example, run unchanged under Node against a served gateway.

It parses every message as JSON and closes on ``finish_reason``; the end of a
stream on the EventSource endpoints is a named ``done`` event, so it never
meets the ``[DONE]`` sentinel (POST /v1/chat/completions keeps OpenAI's).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from streaming.providers.demo import demo_tokens

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "eventsource.mjs"


@pytest.fixture(scope="session")
def node_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example beside its one dependency, Node's ``eventsource`` package from npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm) is not installed: the EventSource example needs it")
    where = tmp_path_factory.mktemp("node-eventsource")
    subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "eventsource"],
        cwd=where,
        check=True,
        capture_output=True,
        timeout=90,
    )
    script = where / EXAMPLE.name
    shutil.copyfile(EXAMPLE, script)
    return script


def test_the_eventsource_example_runs_to_the_end(node_example, gateway, alice, demo_model):
    ticket = httpx.post(f"{gateway.url}/v1/tickets", headers=alice.headers).json()["ticket"]
    prompt = "Tell me about rivers"

    run = subprocess.run(
        ["node", node_example.name, gateway.url, ticket, demo_model, prompt],
        cwd=node_example.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    expected = "".join(demo_tokens([{"role": "user", "content": prompt}]))
    assert run.stdout == expected + "\n"


def test_eventsource_endpoints_end_with_a_named_event_openai_keeps_its_own(
    gateway, alice, demo_model
):
    ticket = httpx.post(f"{gateway.url}/v1/tickets", headers=alice.headers).json()["ticket"]
    params = {"model": demo_model, "prompt": "hi", "ticket": ticket}
    with httpx.stream("GET", f"{gateway.url}/v1/chat/stream", params=params) as response:
        blocks = response.read().decode().strip().split("\n\n")
    # Every unnamed message is JSON; the end is `event: done` (its data still
    # [DONE], for parsers that stop on that line).
    assert blocks[-1].splitlines()[1:] == ["event: done", "data: [DONE]"]
    assert all("event:" not in block for block in blocks[:-1])

    body = {"model": demo_model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", headers=alice.headers, json=body
    ) as response:
        last = response.read().decode().strip().split("\n\n")[-1]
    assert last.splitlines()[1:] == ["data: [DONE]"]
