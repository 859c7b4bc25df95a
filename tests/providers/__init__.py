"""Provider adapters, the SSE decoder and the fake upstreams."""
