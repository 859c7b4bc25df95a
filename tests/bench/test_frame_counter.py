"""bench.load's WebSocket reader: server frames counted in bulk, split anywhere."""

from __future__ import annotations

import orjson

from bench.load import FrameCounter


def server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2) + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8) + payload


def chunk(text: str) -> bytes:
    return orjson.dumps({"type": "chunk", "choices": [{"delta": {"content": text}}]})


def test_tokens_are_counted_however_the_frames_are_split() -> None:
    stream = b"".join(
        [server_frame(chunk(""))]
        + [server_frame(chunk(f"w{i} ")) for i in range(50)]
        + [server_frame(chunk("x" * 300))]  # a 16-bit length
        + [server_frame(chunk("y" * 70_000))]  # a 64-bit length
        + [server_frame(b"", opcode=0x9)]
        + [server_frame(b'{"type":"stream.done","request_id":"r1"}')]
    )
    for step in (1, 7, 4096, len(stream)):
        counter = FrameCounter()
        for at in range(0, len(stream), step):
            counter.feed(stream[at : at + step])
        assert (counter.tokens, counter.done, counter.error) == (52, True, None)
        assert counter.pings == [b""] and counter.pending == b""


def test_an_error_message_or_a_close_is_an_error() -> None:
    error = FrameCounter()
    error.feed(server_frame(b'{"type":"error","error":{"code":"bad"}}'))
    assert error.error is not None and '"code":"bad"' in error.error and not error.done

    closed = FrameCounter()
    closed.feed(server_frame((1011).to_bytes(2) + b"gone", opcode=0x8))
    assert closed.error is not None and "gone" in closed.error
