"""The Scrubber: secrets out of upstream text, with no I/O."""

from __future__ import annotations

import pytest

from streaming.providers.base import scrub_error
from streaming.providers.errors import ProviderError
from streaming.providers.scrub import REDACTED, Scrubber

KEY = "sk-proj-CANARYkey0123456789abcdef"
ODD_KEY = "plainCanaryValueWithNoShape42"


def test_the_key_and_auth_header_values_go_verbatim_wherever_they_are() -> None:
    scrub = Scrubber.for_request(ODD_KEY, {"x-api-key": "hdr-Canary-0001", "accept": "*/*"})
    text = f"you sent {ODD_KEY}!{ODD_KEY} and hdr-Canary-0001"
    assert scrub.text(text) == f"you sent {REDACTED}!{REDACTED} and {REDACTED}"


def test_a_bearer_header_value_goes_with_and_without_its_scheme() -> None:
    scrub = Scrubber.for_request("", {"Authorization": f"Bearer {ODD_KEY}"})
    assert ODD_KEY not in scrub.text(f"token was {ODD_KEY}")
    assert scrub.text(f"Authorization: Bearer {ODD_KEY}") == f"Authorization: {REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdefghijklmnop1234",
        "bearer abc.def-ghi_jkl~mno",
        "Incorrect API key provided: sk-abcdef1234567890.",
        "key sk-ant-api03-AbCdEf_0123456789-xyz was revoked",
        'headers: {"x-api-key": "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5"}',
        "api_key=0123456789abcdef0123456789",
        "client_secret: 'A1B2C3D4E5F6G7H8I9J0'",
        "access_token=ya29.a0AfH6SMBx-long-token-value",
        "api-key: 4f3c2b1a0918273645546372819a0b1c",
    ],
)
def test_credential_shapes_go_without_knowing_them(text: str) -> None:
    scrubbed = Scrubber().text(text)
    assert REDACTED in scrubbed
    for secret in (
        "abcdefghijklmnop",
        "sk-abcdef",
        "AbCdEf_0123",
        "Zm9vYmFy",
        "0123456789abc",
        "A1B2C3D4",
        "ya29",
        "4f3c2b1a",
    ):
        assert secret not in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "Invalid value for 'messages'.",
        "max_tokens: 4096 is too large",
        "Rate limit reached for gpt-4o in organization org-abc on tokens per min",
        "the key 'temperature' is unknown",
        "a short token=abc",
    ],
)
def test_ordinary_error_text_is_left_alone(text: str) -> None:
    assert Scrubber.for_request("sk-unrelated-key-000000", {}).text(text) == text


def test_json_bodies_are_scrubbed_in_keys_and_values_and_bounded() -> None:
    scrub = Scrubber([ODD_KEY])
    body = {"error": {"message": f"bad key {ODD_KEY}", "echo": [{ODD_KEY: 1}], "code": 401}}
    assert scrub.json(body) == {
        "error": {"message": f"bad key {REDACTED}", "echo": [{REDACTED: 1}], "code": 401}
    }
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    assert "x" not in str(scrub.json(deep))


def test_scrub_error_cleans_message_and_body() -> None:
    error = ProviderError(f"upstream error mid-stream: {ODD_KEY}", body=ODD_KEY)
    scrub_error(error, Scrubber([ODD_KEY]))
    assert ODD_KEY not in error.message and ODD_KEY not in str(error)
    assert error.body == REDACTED


def test_long_upstream_text_is_cut_before_it_is_scrubbed() -> None:
    scrubbed = Scrubber().text("a-" * 100_000 + "api_key=0123456789abcdef0123456789")
    assert len(scrubbed) < 20_100 and scrubbed.endswith("...(cut)")
