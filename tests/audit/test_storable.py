"""Every text and JSON field of an audit record stores a NUL, escaped (PostgreSQL
cannot hold U+0000 in text or jsonb), in a batch beside ordinary records."""

from __future__ import annotations

import pytest

from audit.models import AuditRecord
from audit.services import audit_records_write
from audit.storable import storable_json, storable_text
from tests.audit.conftest import make_attempt, make_entry

pytestmark = pytest.mark.django_db

N = "\x00"


def test_storable_escapes_nul_in_text_keys_and_values_and_leaves_the_rest() -> None:
    assert storable_text(f"a{N}b") == "a\\u0000b"
    plain = {"k": ["v", 1, None, 2.5]}
    assert storable_json(plain) is plain
    assert storable_json({f"k{N}": [f"v{N}", {"x": N}]}) == {
        "k\\u0000": ["v\\u0000", {"x": "\\u0000"}]
    }


def test_a_batch_with_nul_everywhere_stores_every_record() -> None:
    hostile = make_entry(
        "chatcmpl-nul",
        public_model=f"m{N}",
        app_name=f"app{N}",
        request_messages=[{"role": "user", "content": f"hi{N}"}],
        request_params={"user": f"u{N}", "metadata": {f"k{N}": f"v{N}"}},
        response_text=f"answer{N}",
        tool_calls=[{"id": f"c{N}", "function": {"name": "f", "arguments": f"{N}"}}],
        usage={"prompt_tokens": 1, f"odd{N}": f"x{N}"},
        outcome="upstream_error",
        error_class=f"e{N}",
        error_message=f"upstream said {N}",
        attempts=[make_attempt("openai", outcome="failed", error_message=f"bad {N}")],
    )
    audit_records_write(
        entries=[make_entry("chatcmpl-before"), hostile, make_entry("chatcmpl-after")]
    )

    assert AuditRecord.objects.count() == 3
    record = AuditRecord.objects.get(request_id="chatcmpl-nul")
    assert record.public_model == "m\\u0000"
    assert record.request_messages[0]["content"] == "hi\\u0000"
    assert record.request_params["metadata"] == {"k\\u0000": "v\\u0000"}
    assert record.response_text == "answer\\u0000"
    assert record.usage["odd\\u0000"] == "x\\u0000"
    assert record.error_message == "upstream said \\u0000"
    assert record.attempts.get().error_message == "bad \\u0000"
