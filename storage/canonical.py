"""The one JSON serialisation the database stores and the audit chain hashes: sorted keys, no whitespace,
UTF-8 rather than escapes. Storing JSON columns in this form lets `audit verify` hash the stored text
as it is, without parsing and re-serialising every event."""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _ENCODER.encode(value)
