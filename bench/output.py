"""What each benchmark leaves in bench/out/: its section of RESULTS.md, and its numbers as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, section: str, data: Any, indent: int | None = 2) -> None:
    """`out` with the suffix .md for the section (bench/__main__.py gathers it) and .json for the data."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(section)
    out.with_suffix(".json").write_text(json.dumps(data, indent=indent))
