"""Validation of OpenAI embeddings requests into EmbeddingRequest.

OpenAI's rules: ``input`` is a non-empty string, an array of at most 2048
non-empty strings, a non-empty array of token ids, or an array of at most
2048 non-empty token arrays. A request outside them is a 400 whose ``param``
and message name the field.
"""

from __future__ import annotations

from typing import Any

from streaming.providers import EmbeddingRequest
from streaming.transports.errors import ApiError
from streaming.transports.schema import USER_MAX_CHARS, _check_model, check_depth

MAX_INPUTS = 2048
MAX_DIMENSIONS = 4096  # above the largest OpenAI embedding model (3072)
ENCODING_FORMATS = ("float", "base64")
PARAMS = {"encoding_format", "dimensions", "user"}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request", param=param)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_input(value: Any) -> str | list[Any]:
    if isinstance(value, str):
        if not value:
            raise _bad("'input' must not be an empty string", "input")
        return value
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a non-empty string or a non-empty array", "input")
    if all(_is_token(v) for v in value):
        return value  # one token array
    if len(value) > MAX_INPUTS:
        raise _bad(f"'input' must hold at most {MAX_INPUTS} items", "input")
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            continue
        if isinstance(item, list) and item and all(_is_token(t) for t in item):
            continue
        raise _bad(
            f"input[{i}] must be a non-empty string or a non-empty array of token ids",
            f"input[{i}]",
        )
    if len({isinstance(item, str) for item in value}) > 1:
        raise _bad("'input' must hold only strings or only token arrays", "input")
    return value


def _check_params(data: dict[str, Any]) -> dict[str, Any]:
    unknown = set(data) - PARAMS - {"model", "input"}
    if unknown:
        name = sorted(unknown)[0]
        raise _bad(f"unrecognized request argument supplied: {name}", name)
    params = {k: v for k, v in data.items() if k in PARAMS and v is not None}
    if params.get("encoding_format", "float") not in ENCODING_FORMATS:
        raise _bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dimensions = params.get("dimensions", 1)
    if not _is_token(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise _bad(f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}", "dimensions")
    user = params.get("user", "")
    if not isinstance(user, str) or len(user) > USER_MAX_CHARS:
        raise _bad(f"'user' must be a string of at most {USER_MAX_CHARS} characters", "user")
    return params


def parse_embeddings_request(data: Any) -> EmbeddingRequest:
    """Validate a decoded request body; raise ApiError(400) on anything wrong."""
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object")
    check_depth(data)
    model = _check_model(data.get("model"))
    if "input" not in data:
        raise _bad("'input' is required", "input")
    return EmbeddingRequest(
        model=model, input=_check_input(data["input"]), params=_check_params(data)
    )
