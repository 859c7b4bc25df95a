"""A reader that falls behind: what it is sent, and what it holds.

It gets the events it missed in a few large batches, each encoded into one
write; the batches are views of the log, so holding one costs next to
nothing, and one write stays within a quarter of SLUICE_READER_BUFFER_BYTES
(the server frames a copy of it, and the transport buffers some more).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streaming.core.events import END, TEXT
from streaming.core.log import FRAMING_BYTES, LogLimits, MemoryStreamLog
from streaming.core.reader import follow
from streaming.transports.encoders.chat import ChatChunks, ChatSSE
from tests.streams.allocations import held_by_stream_code

LIMITS = LogLimits.shared(1_000_000, 1 << 30)


def chunk(index: int, size: int = 90) -> bytes:
    """A text delta's payload (a JSON string)."""
    return b'"%d %s"' % (index, b"x" * size)


def sse() -> ChatSSE:
    return ChatSSE(ChatChunks("chatcmpl-test", 0, "model"), retry_ms=1000)


def log_of(payloads: list[bytes], *, ended: bool = True) -> MemoryStreamLog:
    log = MemoryStreamLog(LIMITS)
    for payload in payloads:
        log.append(TEXT, payload)
    if ended:
        log.append(END, b"")
    return log


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=60),
    budget=st.integers(min_value=1, max_value=4000),
)
def test_batches_cover_the_log_in_order_within_the_budget(sizes: list[int], budget: int) -> None:
    payloads = [chunk(i, size) for i, size in enumerate(sizes)]
    log = log_of(payloads)

    cursor, seen = 0, []
    while cursor < log.last_seq:
        batch = list(log.read_after(cursor, budget))
        assert batch, "a read after a cursor short of the end returns an event"
        framed = sum(len(payload) + FRAMING_BYTES for _, _, payload in batch)
        assert len(batch) == 1 or framed - len(batch[-1][2]) - FRAMING_BYTES < budget
        seen += batch
        cursor = batch[-1][0]

    assert seen == [(i + 1, TEXT, p) for i, p in enumerate(payloads)] + [(len(sizes) + 1, END, b"")]


def test_a_batch_reads_the_log_it_was_taken_from_as_the_log_grows() -> None:
    log = log_of([chunk(i) for i in range(50)], ended=False)
    batch = log.read_after(10, 1 << 20)
    before = list(batch)

    for i in range(50, 5000):  # the log's buffer is reallocated as it grows
        log.append(TEXT, chunk(i))

    assert list(batch) == before
    assert [seq for seq, _, _ in batch] == list(range(11, 51))
    assert batch[-1] == before[-1] and batch[0] == before[0] and len(batch) == 40


def test_holding_a_batch_of_thousands_of_events_holds_no_copy_of_them() -> None:
    log = log_of([chunk(i) for i in range(3000)])

    batch, held = held_by_stream_code(lambda: log.read_after(0, 1 << 22))

    assert len(batch) == 3001
    assert held < 1024, f"a batch held {held} bytes; its payloads are {log.size}"


async def test_a_reader_behind_gets_few_writes_of_at_most_a_quarter_of_its_buffer() -> None:
    log = log_of([chunk(i) for i in range(3000)])  # about 330 KB of events
    buffer_bytes = 128 * 1024

    encoder = sse()
    writes = [
        encoder.encode(batch)
        async for batch in follow(log, 0, buffer_bytes=buffer_bytes)
        if batch is not None
    ]

    # Few writes, each within a quarter of the buffer and (but the last) over half of that.
    assert 5 <= len(writes) <= 3001 // 60
    assert all(len(write) <= buffer_bytes // 4 for write in writes)
    assert all(len(write) > buffer_bytes // 8 for write in writes[:-1])
    sent = b"".join(writes)
    one_by_one = sse()
    assert sent == b"".join(one_by_one.encode([entry]) for entry in log.read_after(0, 1 << 30))
    assert sent.endswith(b"id: 3001\ndata: [DONE]\n\n")


async def test_a_reader_keeping_up_gets_each_event_as_it_comes() -> None:
    log = log_of([], ended=False)
    reader = follow(log, 0, buffer_bytes=1 << 20)

    log.append(TEXT, chunk(0))
    first = await anext(reader)
    log.append(TEXT, chunk(1))
    log.append(END, b"")
    rest = [batch async for batch in reader]

    assert first is not None and list(first) == [(1, TEXT, chunk(0))]
    assert [list(batch) for batch in rest if batch is not None] == [
        [(2, TEXT, chunk(1)), (3, END, b"")]
    ]
