"""Image files: open anything Pillow reads as uint8 RGB, save PNG with A1111 parameters.

The A1111 text itself is ``engine.metadata``'s (one writer for the CLI and the editor).
Opening is ``engine.images``' (one loader for the CLI and the editor): EXIF orientation,
alpha over white, palette, CMYK, greyscale and 16-bit to 8-bit RGB, writeable arrays. Every
failure is a ``FileError`` with a sentence for the user. Saving is atomic: write a
temporary file, then rename it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from engine import metadata
from engine.images import (  # noqa: F401 (one loader and one atomic write for CLI and editor)
    MAX_PIXELS,
    TEMP_SUFFIX,
    FileError,
    atomic_write,
    clean_stale_temporaries,
    load_image,
    load_image_bytes,
    pid_alive,
    to_rgb,
)

from .methods import PER_METHOD, panel_method

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"


# ---- A1111 "parameters" text: written and parsed by engine.metadata -------------------------


def settings_from_parameters(
    p: Mapping[str, str], problems: list[str] | None = None
) -> dict[str, Any]:
    """Parsed A1111 fields → document settings: each field read through its declaration in
    ``engine.methods`` (``metadata.request_fields``), the engine method mapped to the panel
    method that runs it and its options filed under that panel method. Only what is present
    and well-formed; a sentence for each malformed field goes to ``problems``."""
    fields, bad = metadata.request_fields(p)
    if problems is not None:
        problems.extend(bad)
    out = {k: v for k, v in fields.items() if k not in ("method", "options") and v != ""}
    panel = panel_method(fields.get("method"))
    if panel is not None:
        out["method"] = panel.key
        offered = {q.key for q in panel.params if q.option}
        opts = {k: v for k, v in fields.get("options", {}).items() if k in offered}
        # a per-method common field (strength) is that method's own
        opts.update({k: out.pop(k) for k in PER_METHOD if k in out})
        if opts:
            out["options"] = {panel.key: opts}
    return out


def read_parameters(path: str | os.PathLike) -> dict[str, str] | None:
    """The parsed A1111 parameters of an image file, or None (none there, or unreadable)."""
    try:
        return metadata.read_png_parameters(path)
    except (OSError, ValueError, SyntaxError):
        return None


# ---- atomic writes: engine.images' (one for the CLI and the editor) ------------------------


def save_png(image: np.ndarray, path: str | os.PathLike, params: Mapping[str, Any] | None) -> Path:
    """PNG with the A1111 ``parameters`` chunk (text by engine.metadata), written atomically;
    ``params`` None or empty: no chunk (nothing is known about how the image was made)."""
    info = PngImagePlugin.PngInfo()
    if params:
        info.add_text("parameters", metadata.format_parameters(params))
    try:
        return atomic_write(path, lambda f: Image.fromarray(image).save(f, "PNG", pnginfo=info))
    except OSError as e:
        raise FileError(f"Could not save {Path(path).name}: {e.strerror or e}.") from e


def save_image(
    image: np.ndarray, path: str | os.PathLike, params: Mapping[str, Any] | None
) -> Path:
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
