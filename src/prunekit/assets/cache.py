"""Where fetched packages and converted models live: $PRUNEKIT_CACHE, else $XDG_CACHE_HOME/prunekit."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("PRUNEKIT_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "prunekit"
