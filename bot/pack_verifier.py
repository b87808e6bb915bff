#!/usr/bin/env python3
"""Check an FR request evidence pack without the bot: `python3 verify_pack.py [PACK_FOLDER]`.

Standard library only, so anyone can run it (every pack carries a copy). It checks that each file matches
the manifest, that each event's hash matches its content, and that each free text matches the commitment
in its event. Exit 0 when everything matches, 1 otherwise.

Event hash: SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of
{seq, request_id, actor, action, details, created_at, prev_hash}. Commitment: SHA-256 of the salt
(hex-decoded) followed by the text (UTF-8), stored in the event as {"$sealed": hex}.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HASHED_FIELDS = ("seq", "request_id", "actor", "action", "details", "created_at", "prev_hash")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _at(details: Any, path: str) -> Any:
    for part in path.split("."):
        details = details[int(part)] if isinstance(details, list) else details[part]
    return details


def check(folder: Path) -> list[str]:
    problems: list[str] = []
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    for name, digest in manifest["files"].items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: does not match the manifest")
    events: dict[int, dict[str, Any]] = {}
    for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        record = {field: event[field] for field in HASHED_FIELDS}
        if hashlib.sha256(canonical(record).encode("utf-8")).hexdigest() != event["hash"]:
            problems.append(f"event seq {event['seq']}: content does not match its hash")
        events[event["seq"]] = event
    for line in (folder / "texts.jsonl").read_text(encoding="utf-8").splitlines():
        text = json.loads(line)
        event = events.get(text["seq"])
        try:
            committed = _at(event["details"], text["path"])["$sealed"] if event else None
        except (KeyError, IndexError, TypeError, ValueError):
            committed = None
        actual = hashlib.sha256(bytes.fromhex(text["salt"]) + text["text"].encode("utf-8")).hexdigest()
        if committed != actual:
            problems.append(f"text seq {text['seq']} {text['path']}: does not match its commitment")
    return problems


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent)
    problems = check(folder)
    for problem in problems:
        print(problem)
    print("pack verified: every event and text matches" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
