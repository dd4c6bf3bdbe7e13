"""The observable document: image, colour-stroke layer, mask layer, settings and results.

Layers are plain numpy arrays (``image`` uint8 HxWx3, ``strokes`` uint8 HxWx4 RGBA,
``mask`` uint8 HxW, 255 = edit). Views wrap them in QImages without copying and repaint
the rectangle named by ``layer_changed``. Every change to a layer goes through an undoable
``PatchCommand`` that stores only the changed rectangle, before and after.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QRect, Signal

from engine import imageops
from engine.methods import COMMON
from engine.methods import METHODS as ENGINE_METHODS

from .undo import UndoStack

LAYERS = ("image", "strokes", "mask")
UNDO_LIMIT = 64  # commands; each holds only its dirty rectangle
UNDO_BYTES = 512 * 1024**2  # and all of them together at most this much
HISTORY_LIMIT = 24  # results kept in memory
HISTORY_BYTES = 384 * 1024**2  # and their images together at most this much (8 at 4096²)


def default_settings() -> dict[str, Any]:
    """A new document's settings; the common request fields take the defaults declared in
    ``engine.methods`` (read now, so there is one copy of them)."""
    return {
        "method": "sdedit",
        "prompt": "",
        "negative_prompt": "",
        **{k: spec.default for k, spec in COMMON.items()},
        "seed_locked": False,
        "batch_count": 1,
        "batch_size": 1,
        "options": {},
    }


DEFAULT_SETTINGS: dict[str, Any] = default_settings()  # the keys, and defaults at import


def _blank(shape) -> np.ndarray:
    """Zeros with every page already mapped: np.zeros maps pages lazily, and on a 4096²
    layer the first brush strokes would pay a page fault per row they touch."""
    arr = np.empty(shape, np.uint8)
    arr.fill(0)
    return arr


def owned(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous uint8 array the document owns and may write to. Loaders may hand out
    read-only views (Pillow's buffer); editing one fails only later, at the first brush
    dab or Apply, so every array entering the document is made writeable here."""
    return np.require(arr, np.uint8, ["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])


def bbox(changed: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the True pixels of a 2-D bool array, or None."""
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


@dataclass(eq=False)
class HistoryEntry:
    """A finished job: its image at document size and the parameters that made it."""

    image: np.ndarray
    parameters: dict[str, Any]
    id: int = field(default_factory=itertools.count(1).__next__)

    @property
    def title(self) -> str:
        p = self.parameters
        method = p.get("method", "?")
        spec = ENGINE_METHODS.get(method)
        seeded = spec is None or (spec.stochastic and "seed" in spec.common)
        text = f"{method} · seed {p.get('seed', '?')}" if seeded else str(method)
        if p.get("interrupted"):
            text += f" · interrupted at {p['interrupted']}"
        return text

    def tooltip(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.parameters.items())


class PatchCommand:
    """Replace rectangles of one layer; remembers before/after of those rectangles only.

    ``patches`` is a list of (y0, x0, before, after); a long brush stroke is stored as the
    tiles it touched, so memory follows the painted area, not its bounding box. ``after``
    may be None when the change is already in the layer (painting): it is read from the
    layer on the first undo, when the layer still holds exactly that state, so releasing
    a stroke copies nothing. ``nbytes`` counts it as if it were there."""

    def __init__(self, doc, layer, patches, text):
        self.doc, self.layer, self.patches, self.text = doc, layer, list(patches), text
        self.nbytes = sum(2 * b.nbytes for _, _, b, _ in self.patches)

    def redo(self):
        for y0, x0, _, after in self.patches:
            self.doc.write_patch(self.layer, y0, x0, after)

    def undo(self):
        layer = self.doc.layer(self.layer)
        for i, (y0, x0, before, after) in enumerate(self.patches):
            if after is None:
                after = layer[y0 : y0 + before.shape[0], x0 : x0 + before.shape[1]].copy()
                self.patches[i] = (y0, x0, before, after)
            self.doc.write_patch(self.layer, y0, x0, before)


class Document(QObject):
    layer_changed = Signal(str, QRect)  # layer name, rectangle in image pixels
    reset = Signal()  # new image size / new document
    settings_changed = Signal()
    history_changed = Signal()
    modified_changed = Signal(bool)

    def __init__(self, image: np.ndarray | None = None, parent=None):
        super().__init__(parent)
        self.undo_stack = UndoStack(self, max_bytes=UNDO_BYTES, max_count=UNDO_LIMIT)
        self.undo_stack.cleanChanged.connect(self._clean_changed)
        self.settings: dict[str, Any] = default_settings()
        self.history: list[HistoryEntry] = []
        self.inversion: int | None = None  # the engine's id of an "invert" result, for "reedit"
        self.inversion_source: str = ""  # image_key() of the image that was inverted
        self.path: str | None = None  # where the image came from / was exported
        self.project_path: str | None = None
        # (image_key, parameters): the generation parameters that describe the image layer,
        # valid only while its pixels still have that key (an opened PNG's, an applied result's)
        self.described: tuple[str, dict[str, Any]] | None = None
        self._extra_dirty = False
        self.set_image(image if image is not None else np.full((512, 512, 3), 255, np.uint8))

    # ---- layers -------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def set_image(self, image: np.ndarray, strokes=None, mask=None) -> None:
        """Start over on a new image (clears undo and layers; keeps settings)."""
        h, w = image.shape[:2]
        self.image = owned(image[..., :3])
        self.strokes = _blank((h, w, 4)) if strokes is None else owned(strokes)
        self.mask = _blank((h, w)) if mask is None else owned(mask)
        self.inversion = None
        self.described = None
        self.undo_stack.clear()
        self._extra_dirty = False
        self.reset.emit()

    def layer(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def full_rect(self) -> QRect:
        return QRect(0, 0, self.size[1], self.size[0])

    def write_patch(self, name: str, y0: int, x0: int, patch: np.ndarray) -> None:
        h, w = patch.shape[:2]
        self.layer(name)[y0 : y0 + h, x0 : x0 + w] = patch
        self.layer_changed.emit(name, QRect(x0, y0, w, h))

    def notify(self, name: str, y0: int, x0: int, y1: int, x1: int) -> None:
        self.layer_changed.emit(name, QRect(x0, y0, x1 - x0, y1 - y0))

    def replace_layer(self, name: str, new: np.ndarray, text: str) -> bool:
        """Undoably replace a whole layer; stores only the bounding box of what changed."""
        old = self.layer(name)
        if new.shape != old.shape:
            raise ValueError(f"{name}: expected shape {old.shape}, got {new.shape}")
        diff = new != old
        box = bbox(diff if diff.ndim == 2 else diff.any(2))
        if box is None:
            return False
        y0, x0, y1, x1 = box
        before = old[y0:y1, x0:x1].copy()
        after = np.ascontiguousarray(new[y0:y1, x0:x1], dtype=np.uint8)
        self.push(PatchCommand(self, name, [(y0, x0, before, after)], text))
        return True

    def push(self, cmd: PatchCommand, done: bool = False) -> None:
        """Add an undoable change (``done``: it is already in the layer, as after painting)."""
        self.undo_stack.push(cmd, done)

    def undo_bytes(self) -> int:
        return self.undo_stack.nbytes()

    # ---- mask operations (numpy helpers from engine.imageops, no torch in widgets) ------

    def _mask_float(self) -> np.ndarray:
        return self.mask.astype(np.float32) / 255.0

    def _set_mask_float(self, m: np.ndarray, text: str) -> bool:
        new = (np.clip(m, 0, 1) * 255.0).round().astype(np.uint8)
        return self.replace_layer("mask", new, text)

    def grow_mask(self, px: int) -> bool:
        return self._set_mask_float(
            imageops.dilate(self._mask_float(), int(px)), f"Grow mask {px}px"
        )

    def shrink_mask(self, px: int) -> bool:
        inv = imageops.dilate(1.0 - self._mask_float(), int(px))
        return self._set_mask_float(1.0 - inv, f"Shrink mask {px}px")

    def feather_mask(self, px: float) -> bool:
        return self._set_mask_float(imageops.blur(self._mask_float(), px / 2), "Feather mask")

    def invert_mask(self) -> bool:
        return self.replace_layer("mask", 255 - self.mask, "Invert mask")

    def clear_layer(self, name: str) -> bool:
        return self.replace_layer(name, np.zeros_like(self.layer(name)), f"Clear {name}")

    def set_mask(self, mask: np.ndarray, text: str = "Set mask") -> bool:
        if mask.dtype != np.uint8:
            mask = (np.clip(mask, 0, 1) * 255).round().astype(np.uint8)
        return self.replace_layer("mask", mask, text)

    def apply_result(self, entry: HistoryEntry) -> bool:
        """Put a result into the image layer (undoable)."""
        if not self.replace_layer("image", entry.image, f"Apply {entry.title}"):
            return False
        self.describe(entry.parameters)
        return True

    def describe(self, parameters: dict[str, Any] | None) -> None:
        """Record that ``parameters`` made the image layer as it is now (None: unknown)."""
        self.described = None if not parameters else (image_key(self.image), dict(parameters))

    def image_parameters(self) -> dict[str, Any] | None:
        """The parameters that made the image layer as it is now, or None if unknown."""
        if self.described is None or self.described[0] != image_key(self.image):
            return None
        return dict(self.described[1])

    # ---- settings & history --------------------------------------------------------------

    def update_settings(self, **changes) -> None:
        if any(self.settings.get(k) != v for k, v in changes.items()):
            self.settings.update(changes)
            self.mark_dirty()
            self.settings_changed.emit()

    def add_result(self, image: np.ndarray, parameters: dict) -> HistoryEntry:
        entry = HistoryEntry(owned(image), dict(parameters))
        self.history.append(entry)
        del self.history[:-HISTORY_LIMIT]
        # bounded by bytes too (24 results at 4096² would be 1.15 GB); keeps the newest
        while len(self.history) > 1 and sum(e.image.nbytes for e in self.history) > HISTORY_BYTES:
            del self.history[0]
        self.mark_dirty()
        self.history_changed.emit()
        return entry

    def remove_result(self, entry: HistoryEntry) -> None:
        if entry in self.history:
            self.history.remove(entry)
            self.mark_dirty()
            self.history_changed.emit()

    # ---- modified state -----------------------------------------------------------------

    def _clean_changed(self, clean: bool) -> None:
        try:
            self.modified_changed.emit(not clean)
        except RuntimeError:  # the stack reports while the document is being destroyed
            pass

    def mark_dirty(self) -> None:
        was = self.is_modified()
        self._extra_dirty = True
        if not was:
            self.modified_changed.emit(True)

    def mark_saved(self) -> None:
        self._extra_dirty = False
        self.undo_stack.setClean()
        self.modified_changed.emit(False)

    def is_modified(self) -> bool:
        return self._extra_dirty or not self.undo_stack.isClean()

    def composite(self) -> np.ndarray:
        """Image with the stroke layer over it (what SDEdit sees)."""
        return imageops.composite_strokes(self.image, self.strokes)


def image_key(image: np.ndarray) -> str:
    """A fingerprint of an image's pixels (is this still the image that was inverted?)."""
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


def thumbnail(image: np.ndarray, side: int = 96) -> np.ndarray:
    """A small copy by striding (cheap, good enough for a history strip icon)."""
    h, w = image.shape[:2]
    step = max(1, math.ceil(max(h, w) / side))
    return np.ascontiguousarray(image[::step, ::step])
