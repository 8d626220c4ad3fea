"""Where MergeScope keeps things on disk (one place; no module imports the zoo to learn a path).

- cache: $MERGESCOPE_CACHE, else ~/.cache/mergescope — zoo builds, image caches, analysis caches;
- run log: $MERGESCOPE_RUNLOG, else <cache>/runs.sqlite;
- exports: $MERGESCOPE_EXPORT_DIR, else <cache>/exports — the only folder the app writes merged
  models into unless the server is started with MERGESCOPE_ALLOW_ANY_PATH=1.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MERGESCOPE_CACHE or ~/.cache/mergescope."""
    env = os.environ.get("MERGESCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mergescope"


def runlog_path() -> Path:
    """$MERGESCOPE_RUNLOG, else runs.sqlite in the cache directory."""
    env = os.environ.get("MERGESCOPE_RUNLOG")
    return Path(env).expanduser() if env else cache_dir() / "runs.sqlite"


def export_dir() -> Path:
    """$MERGESCOPE_EXPORT_DIR, else <cache>/exports."""
    env = os.environ.get("MERGESCOPE_EXPORT_DIR")
    return Path(env).expanduser() if env else cache_dir() / "exports"
