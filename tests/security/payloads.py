"""Request bodies too deep for json.dumps, for the hostile-input tests."""

from __future__ import annotations

import json
import re
from typing import Any


def encode(body: Any) -> str:
    """JSON text; a ``deep(n)`` marker becomes n nested objects (too deep for json.dumps)."""
    text = json.dumps(body)
    for marker in set(DEEP.findall(text)):
        levels = int(marker[len('"__deep') : -3])
        text = text.replace(marker, '{"a": ' * levels + '"x"' + "}" * levels)
    return text


DEEP = re.compile(r'"__deep\d+__"')


def deep(levels: int) -> str:
    return f"__deep{levels}__"
