"""Image files: open anything Pillow reads as uint8 RGB, save PNG with A1111 parameters.

The A1111 text itself is ``engine.metadata``'s (one writer for the CLI and the editor).
Opening applies the EXIF orientation, composites alpha over white, and converts palette,
CMYK, greyscale and 16-bit images to 8-bit RGB. Every failure is a ``FileError`` with a
sentence for the user. Saving is atomic: write a temporary file, then rename it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine import metadata

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"
MAX_PIXELS = 8192 * 8192


class FileError(Exception):
    """A file could not be read or written; ``str(e)`` is a sentence for the user."""


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow image → uint8 HxWx3 RGB (EXIF orientation applied, alpha over white)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray((arr / top * 255).round().astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray((np.asarray(im).clip(0, 1) * 255).round().astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB")), dtype=np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    name = path.name
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise FileError(
                    f"{name} is {im.width}x{im.height}; the editor opens images up to 8192x8192."
                )
            im.load()
            return to_rgb(im)
    except FileError:
        raise
    except FileNotFoundError:
        raise FileError(f"{name} does not exist.") from None
    except UnidentifiedImageError:
        raise FileError(f"{name} is not an image the editor can read.") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise FileError(f"{name} could not be read; it may be truncated or damaged ({e}).") from e


def load_image_bytes(data: bytes, name: str = "pasted image") -> np.ndarray:
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        raise FileError(f"The {name} could not be read ({e}).") from e


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
