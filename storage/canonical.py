"""The one JSON serialisation the database stores and the audit chain hashes: sorted keys, no whitespace,
UTF-8 rather than escapes. Storing JSON columns in this form lets `audit verify` hash the stored text
as it is, without parsing and re-serialising every event."""

from __future__ import annotations

import json
from typing import Any

# The canonical form's settings, shared with the encoder of batches sent as JSON (storage/recordsets.py).
CANONICAL: dict[str, Any] = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False}
_ENCODER = json.JSONEncoder(**CANONICAL)


def canonical_json(value: Any) -> str:
    return _ENCODER.encode(value)
