from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from streaming.providers.sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.flush()


def test_data_lines_are_joined_with_newlines() -> None:
    assert decode(b"data: one\ndata: two\n\n") == [ServerSentEvent(data="one\ntwo")]


def test_event_name_id_and_retry() -> None:
    [event] = decode(b"event: message_start\nid: 7\nretry: 1500\ndata: {}\n\n")
    assert event == ServerSentEvent(data="{}", event="message_start", id="7", retry=1500)


def test_id_persists_to_later_events_and_name_does_not() -> None:
    _first, second = decode(b"event: a\nid: 1\ndata: x\n\ndata: y\n\n")
    assert (second.event, second.id) == ("message", "1")


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert decode(b": keep-alive\n\nfoo: bar\ndata: x\n\n") == [ServerSentEvent(data="x")]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert decode(b"data:x\n\ndata:  y\n\n") == [ServerSentEvent("x"), ServerSentEvent(" y")]


def test_field_without_colon_has_an_empty_value() -> None:
    assert decode(b"data\n\n") == [ServerSentEvent(data="")]


def test_invalid_retry_and_id_with_nul_are_ignored() -> None:
    [event] = decode(b"retry: soon\nid: a\x00b\ndata: x\n\n")
    assert (event.retry, event.id) == (None, None)


def test_crlf_and_cr_line_endings() -> None:
    expected = [ServerSentEvent("a"), ServerSentEvent("b")]
    assert decode(b"data: a\r\n\r\ndata: b\r\n\r\n") == expected
    assert decode(b"data: a\r\rdata: b\r\r") == expected


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [ServerSentEvent("a\nb")]


def test_cr_ended_event_is_dispatched_without_waiting_for_more_bytes() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [ServerSentEvent("a")]


def test_utf8_split_inside_a_character() -> None:
    raw = "data: héllo ✓\n\n".encode()
    assert decode(raw[:8], raw[8:14], raw[14:]) == [ServerSentEvent("héllo ✓")]


def test_leading_bom_is_stripped_even_when_split() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: x\n\n") == [ServerSentEvent("x")]


def test_flush_dispatches_an_unterminated_last_event() -> None:
    assert decode(b"data: [DONE]") == [ServerSentEvent("[DONE]")]


def test_whole_one_line_events_keep_the_last_id() -> None:
    # One whole event per read is the usual upstream token: decoded on a short path.
    chunks = (b"id: 7\ndata: a\n\r", b"data: b\n\n", b"data: c\xc3\xa9\n\n")
    expected = [ServerSentEvent(d, id="7") for d in ("a", "b", "c\u00e9")]
    assert decode(*chunks) == expected
    assert decode(b"".join(chunks)) == expected


def test_nothing_is_dispatched_for_blank_lines_alone() -> None:
    assert decode(b"\n\n\r\n:comment\n\n") == []


STREAM = (
    b": hello\r\n"
    b'event: message_start\ndata: {"type": "message_start"}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"id: 42\rdata: caf\xc3\xa9\r\r"
    b'retry: 10\ndata: {"choices": []}\n\n'
    b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert decode(*chunks) == decode(STREAM)
    assert len(decode(STREAM)) == 5
