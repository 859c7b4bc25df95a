"""Exactly-once delivery: cut connections anywhere, resume, lose and repeat nothing.

The same for OpenAI Responses streams, resumed by ``starting_after``.
Cuts come from both ends: the client hanging up after some events, and a
proxy between client and gateway dropping the connection after some bytes
(often in the middle of an event), as a load balancer restart would.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import unique
from tests.fakes.proxy import CuttingProxy
from tests.streams.clients import Progress, http_attempt, responses_attempt, ws_attempt

pytestmark = [pytest.mark.timeout(300), pytest.mark.django_db(transaction=True)]

# Text that SSE and JSON must carry unharmed: multi-byte characters, newlines,
# things that look like SSE fields.
TOKENS = ["Hé", "llo", ", ", "世界", " 🌊", "\n", "data: x", "\n\n", "id: 9", " ok"] * 6
EXPECTED = "".join(TOKENS)

cut = st.one_of(
    st.tuples(st.just("client"), st.integers(min_value=1, max_value=len(TOKENS))),
    st.tuples(st.just("server"), st.integers(min_value=1, max_value=12_000)),
)
plans = st.lists(cut, min_size=1, max_size=5)


@pytest.fixture
def proxied(gateway):
    with CuttingProxy(gateway.port) as proxy:
        yield proxy


@pytest.fixture
def model(upstream, make_route):
    upstream_model = unique("exact")
    upstream.script(upstream_model, tokens=TOKENS, delay=0.003)
    return make_route(("openai", upstream.base_url, upstream_model))


def run_plan(transport, proxy, actor, model, plan):
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    progress = Progress()
    connections = 0
    while not progress.done:
        kind, amount = plan[connections] if connections < len(plan) else ("none", 0)
        proxy.cuts.clear()
        if kind == "server":
            proxy.cuts.append(amount)
        stop_after = amount if kind == "client" else None
        if transport == "ws":
            ws_attempt(proxy.url, actor.headers, progress, body, stop_after=stop_after)
        elif transport == "responses":
            responses_attempt(proxy.url, actor.headers, progress, body, stop_after=stop_after)
        else:
            http_attempt(
                proxy.url,
                actor.headers,
                progress,
                body,
                ndjson=transport == "ndjson",
                stop_after=stop_after,
            )
        connections += 1
        assert connections < len(plan) + 5, "the stream never completed"
    return progress


@pytest.mark.parametrize("transport", ["sse", "ndjson", "ws", "responses"])
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans)
def test_cut_anywhere_resume_exactly_once(transport, proxied, alice, model, plan):
    progress = run_plan(transport, proxied, alice, model, plan)

    assert progress.error is None
    assert progress.content == EXPECTED
    assert progress.seqs == sorted(set(progress.seqs))
    assert progress.seqs[0] == 1
