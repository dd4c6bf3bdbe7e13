"""Recent files and the last folder a file dialog used, kept between sessions.

One small JSON file in the editor's data folder (``project.data_dir()``); a damaged or
missing one is an empty list, never an error. Any path the user opened or saved goes first;
the list keeps ``LIMIT`` entries that still exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LIMIT = 10
NAME = "recent.json"


def _file() -> Path | None:
    from .project import data_dir

    try:
        return data_dir() / NAME
    except OSError:
        return None


def _load() -> dict:
    f = _file()
    try:
        data = json.loads(f.read_text()) if f is not None and f.exists() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(data: dict) -> None:
    f = _file()
    if f is None:
        return
    try:
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, f)
    except OSError:
        pass  # remembering is a convenience: never a failure the user must see


def files() -> list[str]:
    """Recently opened or saved files, newest first, that still exist."""
    items = _load().get("files", [])
    if not isinstance(items, list):
        return []
    return [p for p in items if isinstance(p, str) and os.path.isfile(p)][:LIMIT]


def last_folder() -> str:
    folder = _load().get("folder", "")
    return folder if isinstance(folder, str) and os.path.isdir(folder) else ""


def remember(path: str, listed: bool = True) -> None:
    """``path`` was opened or saved: its folder is the next dialog's, and (``listed``) it
    heads the recent files."""
    path = os.path.abspath(path)
    data = _load()
    data["folder"] = os.path.dirname(path)
    if listed:
        data["files"] = [path, *[p for p in files() if p != path]][:LIMIT]
    _save(data)
