"""Where MergeScope keeps things on disk (one place; no module imports the zoo to learn a path).

- cache: $MERGESCOPE_CACHE, else ~/.cache/mergescope — zoo builds, image caches, analysis caches;
- run log: $MERGESCOPE_RUNLOG, else <cache>/runs.sqlite;
- exports: $MERGESCOPE_EXPORT_DIR, else <cache>/exports — the only folder the app writes merged
  models into unless the server is started with MERGESCOPE_ALLOW_ANY_PATH=1.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MergeScopeError


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


ALLOW_ANY_PATH_ENV = "MERGESCOPE_ALLOW_ANY_PATH"


def allow_any_path() -> bool:
    """True when the server was started with MERGESCOPE_ALLOW_ANY_PATH=1 (writes anywhere the user names)."""
    return os.environ.get(ALLOW_ANY_PATH_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_export_path(
    name: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    allow_any: bool | None = None,
    overwrite: bool = False,
    suffix: str = ".safetensors",
) -> Path:
    """Where a server-side write (the app's "Save") may go, or a clear `ExportPathError`.

    `name` relative: inside the export folder `root` (default `export_dir()`, created if missing: the
    one folder the app may create). Absolute: must lie inside `root` unless `allow_any` (default: the
    server's MERGESCOPE_ALLOW_ANY_PATH). No other directory is ever created: the folder that would
    hold the file must exist. An existing file is refused unless `overwrite`. The name must end in
    `suffix`. Returns the resolved absolute path (show it to the user).
    """
    allow_any = allow_any_path() if allow_any is None else allow_any
    root = Path(root).expanduser().resolve() if root is not None else export_dir().expanduser().resolve()
    text = str(name).strip()
    if not text:
        raise ExportPathError("give a file name, e.g. merged.safetensors")
    path = Path(text).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if path.suffix != suffix:
        raise ExportPathError(f"{path}: the file name must end in {suffix}")
    inside = path == root or root in path.parents
    if not inside and not allow_any:
        raise ExportPathError(
            f"{path} is outside the export folder {root}. Save inside it (a name like merged{suffix}), "
            f"or start the server with {ALLOW_ANY_PATH_ENV}=1 to allow any path."
        )
    if path.parent == root:
        root.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise ExportPathError(f"folder {path.parent} does not exist; create it first (nothing is created for you)")
    if path.exists() and not overwrite:
        raise ExportPathError(f"{path} already exists; tick 'overwrite' to replace it")
    if path.exists() and path.is_dir():
        raise ExportPathError(f"{path} is a folder")
    return path


class ExportPathError(MergeScopeError):
    """A save path the app refuses (outside the export folder, missing folder, existing file)."""
