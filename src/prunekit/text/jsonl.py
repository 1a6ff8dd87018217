"""JSON-lines files read one parsed line at a time, with the line number for errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from prunekit.errors import PrunekitError


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line; a line that is not JSON is a one-line error."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise PrunekitError(f"{path}:{number} is not valid JSON ({e.msg}): one JSON object per line") from None
