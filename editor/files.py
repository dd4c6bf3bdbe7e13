"""Image files: open anything Pillow reads as uint8 RGB, save PNG with A1111 parameters.

The A1111 text itself is ``engine.metadata``'s (one writer for the CLI and the editor).
Opening is ``engine.images``' (one loader for the CLI and the editor): EXIF orientation,
alpha over white, palette, CMYK, greyscale and 16-bit to 8-bit RGB, writeable arrays. Every
failure is a ``FileError`` with a sentence for the user. Saving is atomic: write a
temporary file, then rename it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine import metadata
from engine.images import (  # noqa: F401 (one loader for the CLI and the editor)
    MAX_PIXELS,
    FileError,
    load_image,
    load_image_bytes,
    to_rgb,
)

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"


# ---- A1111 "parameters" text: written and parsed by engine.metadata -------------------------


def settings_from_parameters(p: Mapping[str, str]) -> dict[str, Any]:
    """Parsed A1111 fields → document settings (only what is present and well-formed)."""
    out: dict[str, Any] = {}
    if p.get("prompt"):
        out["prompt"] = p["prompt"]
    if p.get("Negative prompt"):
        out["negative_prompt"] = p["Negative prompt"]
    for label, key, cast in (
        ("Steps", "steps", int),
        ("CFG scale", "guidance", float),
        ("Seed", "seed", int),
        ("Denoising strength", "strength", float),
        ("Method", "method", str),
    ):
        try:
            if label in p:
                out[key] = cast(p[label])
        except ValueError:
            pass
    return out


def read_parameters(path: str | os.PathLike) -> dict[str, str] | None:
    """The parsed A1111 parameters of an image file, or None (none there, or unreadable)."""
    try:
        return metadata.read_png_parameters(path)
    except (OSError, ValueError, SyntaxError):
        return None


# ---- atomic writes --------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(image: np.ndarray, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """PNG with the A1111 ``parameters`` chunk, written atomically by engine.metadata."""
    try:
        return metadata.save_png(image, path, params)
    except OSError as e:
        raise FileError(f"Could not save {Path(path).name}: {e.strerror or e}.") from e


def save_image(image: np.ndarray, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """PNG keeps the parameters chunk; other formats by extension, without metadata."""
    if Path(path).suffix.lower() in (".png", ""):
        return save_png(image, path, params)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise FileError(f"Unknown image type {Path(path).suffix!r}; save as .png instead.")
    try:
        return atomic_write(path, lambda f: Image.fromarray(image).save(f, format=fmt))
    except OSError as e:
        raise FileError(f"Could not save {Path(path).name}: {e.strerror or e}.") from e
