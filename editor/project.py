"""Project files and autosave.

A project (``.deproj``) is a zip holding ``image.png``, ``strokes.png`` (RGBA), ``mask.png``,
one PNG per history result, and ``project.json`` (settings, history parameters). Saves are
atomic (temporary file, then rename), so a crash mid-save never damages the last good file.

Autosave writes the open document to the user data dir every ``interval`` ms when it has
changed, on a background thread (the GUI only copies the arrays). Each running editor
registers a session file; a clean exit deletes its session. A session file whose editor is
gone (dead process, or an editor in this process that never closed cleanly) is offered
back at start-up by ``recoverable()``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, QTimer, Signal

from .document import Document
from .files import FileError, atomic_write

PROJECT_SUFFIX = ".deproj"
FORMAT = 1
_LIVE_SESSIONS: set[str] = set()  # autosave sessions open in this process


def data_dir() -> Path:
    """``$DIFFUSION_EDITOR_DATA``, else ``$XDG_DATA_HOME/diffusion-editor`` (~/.local/share)."""
    if os.environ.get("DIFFUSION_EDITOR_DATA"):
        base = Path(os.environ["DIFFUSION_EDITOR_DATA"])
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        base = Path(xdg) / "diffusion-editor"
    base.mkdir(parents=True, exist_ok=True)
    return base


def plain(params: dict[str, Any]) -> dict[str, Any]:
    """Only JSON-able scalars (drops arrays and opaque objects such as an inversion)."""
    return {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool))}


# ---- snapshot / write / read ------------------------------------------------------------


def snapshot(doc: Document) -> dict[str, Any]:
    """Copies of everything a project holds (cheap enough for the GUI thread)."""
    return {
        "image": doc.image.copy(),
        "strokes": doc.strokes.copy(),
        "mask": doc.mask.copy(),
        "settings": json.loads(json.dumps(doc.settings, default=str)),
        "history": [(e.image, plain(e.parameters)) for e in doc.history],
        "source_path": doc.path,
    }


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_snapshot(snap: dict[str, Any], path: str | os.PathLike) -> Path:
    meta = {
        "format": FORMAT,
        "settings": snap["settings"],
        "source_path": snap["source_path"],
        "history": [],
    }

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name in ("image", "strokes", "mask"):
                z.writestr(f"{name}.png", _png(snap[name]))
            for i, (image, params) in enumerate(snap["history"]):
                z.writestr(f"history/{i:03d}.png", _png(image))
                meta["history"].append({"file": f"history/{i:03d}.png", "parameters": params})
            z.writestr("project.json", json.dumps(meta, indent=1))

    try:
        return atomic_write(path, write)
    except OSError as e:
        raise FileError(f"Could not save {Path(path).name}: {e.strerror or e}.") from e


def save_project(doc: Document, path: str | os.PathLike) -> Path:
    out = write_snapshot(snapshot(doc), path)
    doc.project_path = str(out)
    doc.mark_saved()
    return out


def read_project(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in a project file, validated; raises ``FileError`` with a sentence."""
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("project.json"))
            if meta.get("format") != FORMAT:
                raise FileError(f"{name} was written by a newer version of the editor.")

            def arr(member: str, mode: str) -> np.ndarray:
                with Image.open(io.BytesIO(z.read(member))) as im:
                    return np.ascontiguousarray(np.asarray(im.convert(mode)))

            image = arr("image.png", "RGB")
            strokes, mask = arr("strokes.png", "RGBA"), arr("mask.png", "L")
            history = [(arr(h["file"], "RGB"), h["parameters"]) for h in meta["history"]]
    except FileError:
        raise
    except FileNotFoundError:
        raise FileError(f"{name} does not exist.") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise FileError(f"{name} is not a readable project file ({e}).") from e
    if strokes.shape[:2] != image.shape[:2] or mask.shape != image.shape[:2]:
        raise FileError(f"{name} is damaged: its layers have different sizes.")
    return {
        "image": image,
        "strokes": strokes,
        "mask": mask,
        "settings": meta.get("settings", {}),
        "history": history,
        "source_path": meta.get("source_path"),
    }


def load_into(doc: Document, data: dict[str, Any], project_path: str | None) -> None:
    doc.set_image(data["image"], data["strokes"], data["mask"])
    doc.history.clear()
    for image, params in data["history"]:
        if image.shape == data["image"].shape:
            doc.add_result(image, params)
    doc.settings.update(data["settings"])
    doc.path, doc.project_path = data.get("source_path"), project_path
    doc.settings_changed.emit()
    doc.history_changed.emit()
    doc.mark_saved()


# ---- autosave & recovery ----------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def autosave_dir() -> Path:
    d = data_dir() / "autosave"
    d.mkdir(parents=True, exist_ok=True)
    return d


def recoverable() -> list[dict[str, Any]]:
    """Autosaves whose editor did not exit cleanly, newest first."""
    out = []
    for meta_path in autosave_dir().glob("*.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        live = meta.get("session") in _LIVE_SESSIONS or (
            meta.get("pid") != os.getpid() and _pid_alive(int(meta.get("pid", 0)))
        )
        data = meta_path.with_suffix(PROJECT_SUFFIX)
        if not live and data.exists():
            out.append({**meta, "path": str(data), "meta_path": str(meta_path)})
    return sorted(out, key=lambda m: m.get("time", 0), reverse=True)


def discard_recovery(entry: dict[str, Any]) -> None:
    for key in ("path", "meta_path"):
        Path(entry[key]).unlink(missing_ok=True)


class Autosaver(QObject):
    """Periodic background autosave of one document; ``stop()`` on clean exit."""

    saved = Signal(str)
    error = Signal(str)

    def __init__(self, doc: Document, interval_ms: int = 60_000, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.session = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _LIVE_SESSIONS.add(self.session)
        self.path = autosave_dir() / f"{self.session}{PROJECT_SUFFIX}"
        self.meta_path = self.path.with_suffix(".json")
        self._thread: threading.Thread | None = None
        self._generation = -1
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.save_now)
        self.timer.start(interval_ms)

    def save_now(self, wait: bool = False) -> bool:
        """Autosave if the document changed since the last autosave."""
        if not self.doc.is_modified() or (self._thread and self._thread.is_alive()):
            return False
        generation = self.doc.undo_stack.index() + 1000 * len(self.doc.history)
        snap = snapshot(self.doc)
        meta = {
            "session": self.session,
            "pid": os.getpid(),
            "time": time.time(),
            "project_path": self.doc.project_path,
            "source_path": self.doc.path,
            "generation": generation,
        }

        def work():
            try:
                write_snapshot(snap, self.path)
                atomic_write(self.meta_path, lambda f: f.write(json.dumps(meta).encode()))
                self.saved.emit(str(self.path))
            except (FileError, OSError) as e:
                self.error.emit(str(e))

        self._thread = threading.Thread(target=work, name="autosave", daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()
        return True

    def stop(self, clean: bool = True) -> None:
        """Clean exit removes the autosave; ``clean=False`` is what a crash leaves behind."""
        self.timer.stop()
        if self._thread:
            self._thread.join()
        _LIVE_SESSIONS.discard(self.session)
        if clean:
            self.path.unlink(missing_ok=True)
            self.meta_path.unlink(missing_ok=True)
