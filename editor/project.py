"""Project files and autosave.

A project (``.deproj``) is a zip holding ``image.png``, ``strokes.png`` (RGBA), ``mask.png``,
one PNG per history result, ``project.json`` (settings, history parameters, and the
parameters that made the image layer, if known), and the last inversion as ``inversion.pt``
(an inversion file, so a re-edit needs no new Invert after a restart). Saves are atomic
(temporary file, then rename), so a crash mid-save never damages the last good file.
Reading validates everything (shapes, sizes, every setting against the panel's ranges)
before returning anything, so opening is all-or-nothing.

Autosave writes the open document to the user data dir every ``interval`` ms when it has
changed, on a background thread (the GUI only copies the arrays; the inversion's bytes are
asked of the engine on that thread too, so a recovered re-edit needs no new Invert), and
deletes it when the
document becomes clean (saved, or replaced). Each running editor registers a session file;
a clean exit deletes its session. A session file whose editor is gone (dead process, or an
editor in this process that never closed cleanly) is offered back at start-up by
``recoverable()``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, QTimer, Signal

from . import document
from .document import Document, image_key
from .files import (
    FileError,
    atomic_write,
    clean_stale_temporaries,
    load_image_bytes,
    pid_alive,
)
from .methods import SettingsError, check_settings

PROJECT_SUFFIX = ".deproj"
FORMAT = 1
_LIVE_SESSIONS: set[str] = set()  # autosave sessions open in this process


def data_dir(create: bool = True) -> Path:
    """``$DIFFUSION_EDITOR_DATA``, else ``$XDG_DATA_HOME/diffusion-editor`` (~/.local/share)."""
    if os.environ.get("DIFFUSION_EDITOR_DATA"):
        base = Path(os.environ["DIFFUSION_EDITOR_DATA"])
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        base = Path(xdg) / "diffusion-editor"
    if create:
        base.mkdir(parents=True, exist_ok=True)
    return base


def plain(params: dict[str, Any]) -> dict[str, Any]:
    """Only what JSON holds: scalars, and lists and tables of them (the fused LoRAs'
    [{"name", "weight", "hash"}]); drops arrays and opaque objects such as an inversion."""
    return {k: v for k, v in params.items() if _jsonable(v)}


def _jsonable(v: Any) -> bool:
    if isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_jsonable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return False


# ---- snapshot / write / read ------------------------------------------------------------


def snapshot(doc: Document, inversion: bytes | None = None) -> dict[str, Any]:
    """Copies of everything a project holds (cheap enough for the GUI thread);
    ``inversion``: the bytes of the document's inversion (the engine keeps it)."""
    return {
        "inversion": None if inversion is None else (inversion, doc.inversion_source),
        "image": doc.image.copy(),
        "strokes": doc.strokes.copy(),
        "mask": doc.mask.copy(),
        "settings": json.loads(json.dumps(doc.settings, default=str)),
        "history": [(e.image, plain(e.parameters)) for e in doc.history],
        "source_path": doc.path,
        "described": doc.described,  # checked against the image off the GUI thread
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
    described = snap.get("described")
    if described is not None and described[0] == image_key(snap["image"]):
        meta["image_parameters"] = plain(described[1])

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name in ("image", "strokes", "mask"):
                z.writestr(f"{name}.png", _png(snap[name]))
            for i, (image, params) in enumerate(snap["history"]):
                z.writestr(f"history/{i:03d}.png", _png(image))
                meta["history"].append({"file": f"history/{i:03d}.png", "parameters": params})
            if snap.get("inversion") is not None:
                data, key = snap["inversion"]
                z.writestr(INVERSION_MEMBER, data)
                meta["inversion"] = {"file": INVERSION_MEMBER, "image_key": key}
            z.writestr("project.json", json.dumps(meta, indent=1))

    try:
        return atomic_write(path, write)
    except OSError as e:
        raise FileError(f"Could not save {Path(path).name}: {e.strerror or e}.") from e


def save_project(doc: Document, path: str | os.PathLike, inversion: bytes | None = None) -> Path:
    out = write_snapshot(snapshot(doc, inversion), path)
    doc.project_path = str(out)
    doc.mark_saved()
    return out


MAX_JSON_BYTES = 16 * 1024**2  # project.json: settings and parameters, never this big
MAX_RESULTS = 1000
MAX_INVERSION_BYTES = 2**30  # an SD inversion of 50 steps is tens of MB
INVERSION_MEMBER = "inversion.pt"


def _params(raw: Any, where: str) -> dict[str, Any]:
    """A result's parameters: a table of text, numbers and true/false (and lists and
    tables of them: the LoRAs it was made with), as ``plain`` writes them."""
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise FileError(f"{where}: its parameters are not a table.")
    bad = [k for k, v in raw.items() if not _jsonable(v)]
    if bad:
        raise FileError(f"{where}: its parameter {bad[0]!r} is not text or a number.")
    return dict(raw)


def _layer(z: zipfile.ZipFile, member: str, name: str, mode: str, size) -> np.ndarray:
    """A stroke or mask layer; its size is checked before it is decoded."""
    with Image.open(io.BytesIO(z.read(member))) as im:
        if (im.height, im.width) != tuple(size):
            raise FileError(f"{name} is damaged: its layers have different sizes.")
        im.load()
        return np.array(im.convert(mode), dtype=np.uint8)


def _inversion(z: zipfile.ZipFile, raw: Any, name: str) -> dict[str, Any] | None:
    """The inversion member's bytes and the key of the image it belongs to; its contents are
    checked by the engine when it is imported (``fileops``), before the document changes."""
    if raw is None:
        return None
    if not (isinstance(raw, dict) and isinstance(raw.get("file"), str)):
        raise FileError(f"{name} is damaged: its inversion names no file.")
    if not isinstance(raw.get("image_key"), str):
        raise FileError(f"{name} is damaged: its inversion names no image.")
    info = z.getinfo(raw["file"])
    if info.file_size > MAX_INVERSION_BYTES:
        raise FileError(f"{name} is damaged: its inversion is {info.file_size} bytes.")
    return {"data": z.read(info), "image_key": raw["image_key"]}


def _read(z: zipfile.ZipFile, name: str) -> dict[str, Any]:
    info = z.getinfo("project.json")
    if info.file_size > MAX_JSON_BYTES:
        raise FileError(f"{name} is damaged: its project.json is {info.file_size} bytes.")
    meta = json.loads(z.read(info))
    if not isinstance(meta, dict):
        raise FileError(f"{name} is damaged: its project.json is not a table.")
    fmt = meta.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
        raise FileError(f"{name} was written by a newer version of the editor.")
    if fmt != FORMAT:
        raise FileError(f"{name} is not a Diffusion Editor project (format {fmt!r}).")
    try:
        settings = check_settings(meta.get("settings", {}))
    except SettingsError as e:
        raise FileError(f"{name} has bad settings: {e}") from None
    source = meta.get("source_path")
    if source is not None and not isinstance(source, str):
        raise FileError(f"{name} is damaged: source_path is not text.")
    history_meta = meta.get("history", [])
    if not isinstance(history_meta, list) or len(history_meta) > MAX_RESULTS:
        raise FileError(f"{name} is damaged: its result list is not a list of results.")
    described = meta.get("image_parameters")
    if described is not None:
        described = _params(described, f"{name}'s image")
    image = load_image_bytes(z.read("image.png"), f"image in {name}")
    size = image.shape[:2]
    strokes = _layer(z, "strokes.png", name, "RGBA", size)
    mask = _layer(z, "mask.png", name, "L", size)
    history = []
    # only the newest results the document keeps are decoded (a project of many 8192²
    # results would otherwise need tens of GB just to be opened)
    keep = max(1, min(document.HISTORY_LIMIT, document.HISTORY_BYTES // image.nbytes))
    first_kept = len(history_meta) - keep
    for i, h in enumerate(history_meta):
        where = f"{name}, result {i + 1}"
        if not isinstance(h, dict) or not isinstance(h.get("file"), str):
            raise FileError(f"{where} is damaged: it names no image file.")
        params = _params(h.get("parameters", {}), where)
        if i < first_kept:
            z.getinfo(h["file"])  # present, though not decoded
            continue
        result = load_image_bytes(z.read(h["file"]), f"result {i + 1} in {name}")
        if result.shape != image.shape:
            raise FileError(f"{where} is damaged: its image is not the size of the picture.")
        history.append((result, params))
    return {
        "inversion": _inversion(z, meta.get("inversion"), name),
        "image": image,
        "strokes": strokes,
        "mask": mask,
        "settings": settings,
        "history": history,
        "source_path": source,
        "image_parameters": described,
    }


def read_project(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in a project file, fully validated before anything is returned (so
    opening is all-or-nothing); raises ``FileError`` with a sentence naming what is wrong."""
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as z:
            return _read(z, name)
    except FileError:
        raise
    except FileNotFoundError:
        raise FileError(f"{name} does not exist.") from None
    except IsADirectoryError:
        raise FileError(f"{name} is a folder, not a project file.") from None
    except PermissionError:
        raise FileError(f"{name} cannot be read: permission denied.") from None
    except KeyError as e:
        raise FileError(f"{name} is damaged: it lacks {e.args[0]!r}.") from None
    except MemoryError:
        raise FileError(f"{name} is too large to open in the memory available.") from None
    except Exception as e:  # zipfile, zlib, json and Pillow raise many types on damaged data
        raise FileError(f"{name} is not a readable project file ({e}).") from e


def load_into(
    doc: Document, data: dict[str, Any], project_path: str | None, inversion: int | None = None
) -> None:
    """Swap validated project data (``read_project``'s) into the document in one go;
    ``inversion``: the engine's id for the project's inversion, once imported."""
    doc.set_image(data["image"], data["strokes"], data["mask"])
    if inversion is not None and data.get("inversion"):
        doc.inversion, doc.inversion_source = inversion, data["inversion"]["image_key"]
    doc.history.clear()
    for image, params in data["history"]:
        doc.add_result(image, params)
    doc.settings.clear()
    doc.settings.update(data["settings"])
    doc.describe(data.get("image_parameters"))
    doc.path, doc.project_path = data.get("source_path"), project_path
    doc.settings_changed.emit()
    doc.history_changed.emit()
    doc.mark_saved()


# ---- autosave & recovery ----------------------------------------------------------------


def autosave_dir(create: bool = True) -> Path:
    d = data_dir(create) / "autosave"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def _session_pid(session: str) -> int:
    """Sessions are named "<pid>-<random>"."""
    head = session.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _mtime(path: str | None) -> float | None:
    try:
        return os.path.getmtime(path) if path else None
    except OSError:
        return None


def recoverable() -> list[dict[str, Any]]:
    """Autosaves whose editor did not exit cleanly, newest first.

    Each entry has ``path`` (the autosave) and ``meta_path`` (its description: time, paths;
    when that is missing or unreadable, the file's own time stands in); ``newer_project``
    when the project it belongs to was saved after it (recovering it would bring back an
    older state)."""
    out = []
    folder = autosave_dir()
    for data in folder.glob(f"*{PROJECT_SUFFIX}"):
        session = data.stem
        meta_path = data.with_suffix(".json")
        entry: dict[str, Any] = {"session": session, "pid": _session_pid(session)}
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a table")
            entry.update(meta)
            entry["time"] = float(entry.get("time", 0))
        except FileNotFoundError:  # killed between writing the autosave and its description
            entry["time"] = _mtime(str(data)) or 0.0
        except (OSError, ValueError, TypeError):  # the autosave itself may still be good
            entry = {"session": session, "pid": _session_pid(session)}
            entry["time"] = _mtime(str(data)) or 0.0
        if session in _LIVE_SESSIONS:
            continue
        pid = entry.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            pid = _session_pid(session)
        if pid != os.getpid() and pid_alive(pid):
            continue  # another editor that is still running
        for key in ("project_path", "source_path"):
            if not isinstance(entry.get(key), str):
                entry[key] = None
        saved = _mtime(entry["project_path"])
        if saved is not None and saved > entry["time"]:
            entry["newer_project"] = saved
        out.append({**entry, "path": str(data), "meta_path": str(meta_path)})
    for meta_path in folder.glob("*.json"):  # a description without its autosave: nothing
        if not meta_path.with_suffix(PROJECT_SUFFIX).exists():  # to recover, unless live
            if meta_path.stem not in _LIVE_SESSIONS and not pid_alive(_session_pid(meta_path.stem)):
                meta_path.unlink(missing_ok=True)
    return sorted(out, key=lambda m: m["time"], reverse=True)


def discard_recovery(entry: dict[str, Any]) -> None:
    for key in ("path", "meta_path"):
        Path(entry[key]).unlink(missing_ok=True)


def set_aside(entry: dict[str, Any]) -> Path:
    """Move a damaged autosave out of the way (so it is reported once, and hides nothing),
    into ``autosave/damaged``, where a person can still look at it. Returns that folder."""
    folder = autosave_dir() / "damaged"
    folder.mkdir(exist_ok=True)
    for key in ("path", "meta_path"):
        src = Path(entry[key])
        if src.exists():
            os.replace(src, folder / src.name)
    return folder


class Autosaver(QObject):
    """Periodic background autosave of one document; ``stop()`` on clean exit.

    The autosave exists only while the document has unsaved changes: when the document
    becomes clean (saved, or another file opened) it is deleted, so a crash never offers a
    state older than the saved project."""

    saved = Signal(str)
    error = Signal(str)

    def __init__(
        self,
        doc: Document,
        interval_ms: int = 60_000,
        parent=None,
        export_inversion: Callable[[int], bytes | None] | None = None,
    ):
        super().__init__(parent)
        self.doc = doc
        self.export_inversion = export_inversion  # inversion id → its file bytes, or None
        self.session = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _LIVE_SESSIONS.add(self.session)
        self.problem = ""  # why autosave is off, for the user
        try:
            folder = autosave_dir()
            clean_stale_temporaries(folder)  # autosaves killed half-way
        except OSError as e:  # a read-only or missing home: edit anyway, and say so
            folder = autosave_dir(create=False)
            self.problem = (
                f"Autosave is off: its folder {folder} cannot be created ({e.strerror or e})."
            )
        self.path = folder / f"{self.session}{PROJECT_SUFFIX}"
        self.meta_path = self.path.with_suffix(".json")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by discard(): a write that started before it is dropped
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.save_now)
        if not self.problem:
            self.timer.start(interval_ms)
        doc.modified_changed.connect(self._on_modified)

    def _on_modified(self, modified: bool) -> None:
        if not modified and not self.doc.is_modified():
            self.discard()

    def save_now(self, wait: bool = False) -> bool:
        """Autosave if the document changed since the last autosave."""
        if self.problem or not self.doc.is_modified():
            return False
        if self._thread and self._thread.is_alive():
            return False
        snap = snapshot(self.doc)
        inversion = (self.doc.inversion, self.doc.inversion_source)
        meta = {
            "session": self.session,
            "pid": os.getpid(),
            "time": time.time(),
            "project_path": self.doc.project_path,
            "source_path": self.doc.path,
        }
        epoch = self._epoch

        def work():
            try:
                with self._lock:
                    if epoch != self._epoch:
                        return  # the document was saved meanwhile: this state is old
                    if inversion[0] is not None and self.export_inversion is not None:
                        data = self.export_inversion(inversion[0])  # None: the engine dropped it
                        snap["inversion"] = None if data is None else (data, inversion[1])
                    write_snapshot(snap, self.path)
                    atomic_write(self.meta_path, lambda f: f.write(json.dumps(meta).encode()))
                self.saved.emit(str(self.path))
            except (FileError, OSError) as e:
                self.error.emit(str(e))
            except Exception as e:  # never silent: a failing autosave puts work at risk
                traceback.print_exc()
                self.error.emit(f"{type(e).__name__}: {e}")

        self._thread = threading.Thread(target=work, name="autosave", daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()
        return True

    def discard(self) -> None:
        """Delete this session's autosave (the document is saved, or was replaced)."""
        with self._lock:
            self._epoch += 1
            for path in (self.path, self.meta_path):
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # no autosave folder at all: nothing to delete
                    pass

    def stop(self, clean: bool = True) -> None:
        """Clean exit removes the autosave; ``clean=False`` is what a crash leaves behind."""
        self.timer.stop()
        if self._thread:
            self._thread.join()
        _LIVE_SESSIONS.discard(self.session)
        if clean:
            self.discard()
