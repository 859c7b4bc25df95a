"""The pure parts of mid-stream continuation: overlap trimming, the request, the filter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.providers import ChatRequest
from streaming.routing.continuation import (
    CONTINUE_INSTRUCTION,
    ContinuationFilter,
    OverlapTrimmer,
    StreamProgress,
    continuation_request,
)


def trim(partial: str, tokens: list[str]) -> str:
    trimmer = OverlapTrimmer(partial)
    return "".join(trimmer.feed(t) for t in tokens) + trimmer.flush()


@pytest.mark.parametrize(
    ("partial", "tokens", "shown"),
    [
        ("The quick brown", [" brown", " fox", " jumps."], " fox jumps."),
        ("The quick brown", [" fox", " jumps."], " fox jumps."),
        ("The quick brown", ["The quick brown fox"], " fox"),
        ("abc ", [" def"], "def"),  # a repeated space is an overlap too
        ("Hello world", ["world"], ""),  # nothing new before the end
        ("", ["anything"], "anything"),
        ("aaa", ["aa", "ab"], "b"),  # the longest overlap wins, even across tokens
        ("I said no", [" no", " no", " more"], " no more"),
    ],
)
def test_overlap_trimming(partial, tokens, shown):
    assert trim(partial, tokens) == shown


def test_text_is_held_only_while_it_could_be_a_repeat():
    trimmer = OverlapTrimmer("The quick brown fox")
    assert trimmer.feed(" brown") == ""  # could be repeating " brown fox"
    assert trimmer.feed(" bear") == " brown bear"  # it was not
    assert trimmer.feed(" sleeps") == " sleeps"  # decided: passes straight through


@given(st.text(max_size=30), st.text(max_size=30), st.integers(0, 30))
def test_trimming_never_loses_new_text(partial, new, cut):
    # Whatever the split into tokens, the client gets a suffix of the new output
    # that, after the partial answer, reads as partial + new with the overlap removed.
    shown = trim(partial, [new[:cut], new[cut:]])
    assert new.endswith(shown)
    overlap = len(new) - len(shown)
    assert partial.endswith(new[:overlap])


def test_continuation_request_has_no_prefill():
    request = ChatRequest(
        model="m",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        params={"max_tokens": 100, "temperature": 0.2},
    )

    follow_up = continuation_request(request, "Hello the", tokens_used=2)

    assert follow_up.messages[:2] == request.messages
    assert follow_up.messages[2] == {"role": "assistant", "content": "Hello the"}
    assert follow_up.messages[-1] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    assert follow_up.params == {"max_tokens": 98, "temperature": 0.2}
    assert request.params["max_tokens"] == 100  # the original is untouched


def test_continuation_with_nothing_said_is_the_original_request():
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert continuation_request(request, "", tokens_used=0) is request


def chunk(content=None, *, role=None, finish=None, tool_calls=None):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_filter_drops_the_new_opener_and_trims_the_repeat():
    rewrite = ContinuationFilter("one two")
    out = []
    for body in [chunk("", role="assistant"), chunk(" two"), chunk(" three"), chunk(finish="stop")]:
        out += rewrite.feed(body)
    out += rewrite.flush()
    assert out == [chunk(" three"), chunk(finish="stop")]


def test_filter_flushes_held_text_before_a_finish():
    rewrite = ContinuationFilter("one two")
    assert rewrite.feed(chunk(" tw")) == []  # might be repeating " two"
    assert rewrite.feed(chunk(finish="stop")) == [chunk(" tw"), chunk(finish="stop")]


def test_progress_knows_when_continuing_is_allowed():
    progress = StreamProgress()
    assert not progress.can_continue()
    progress.observe(chunk("Hi", role="assistant"))
    assert progress.can_continue() and progress.text == "Hi"
    progress.observe(chunk(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "f"}}]))
    assert not progress.can_continue()
