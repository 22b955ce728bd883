"""JSON on the wire, as bytes. Python's json turns an escaped lone UTF-16 surrogate ("\\ud800" with no pair)
into a str that UTF-8 cannot encode, so both directions need care: a request with one is refused by name
(`has_lone_surrogate`), and an upstream's answer with one is passed on escaped, as it came (`to_bytes`),
rather than failing an answer the client has already waited for."""

from __future__ import annotations

import json


def to_bytes(value) -> bytes:
    """Compact UTF-8 JSON; all non-ASCII escaped where the value holds a lone surrogate."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def has_lone_surrogate(value, raw: bytes) -> bool:
    """Whether `value` (decoded from `raw`) holds a lone surrogate. Valid UTF-8 encodes none, so only a \\uD...
    escape can make one; a body without such an escape skips the check."""
    if b"\\ud" not in raw and b"\\uD" not in raw:
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
