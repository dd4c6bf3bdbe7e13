"""Image files: open anything Pillow reads as uint8 RGB, save PNG with A1111 parameters.

The A1111 text itself is ``engine.metadata``'s (one writer for the CLI and the editor).
Opening is ``engine.images``' (one loader for the CLI and the editor): EXIF orientation,
alpha over white, palette, CMYK, greyscale and 16-bit to 8-bit RGB, writeable arrays. Every
failure is a ``FileError`` with a sentence for the user. Saving is atomic: write a
temporary file, then rename it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

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


def settings_from_parameters(
    p: Mapping[str, str], problems: list[str] | None = None
) -> dict[str, Any]:
    """Parsed A1111 fields → document settings (only what is present and well-formed;
    a sentence for each malformed one goes to ``problems``)."""
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
            if problems is not None:
                problems.append(f"{label} is {p[label]!r}; it must be a number.")
    return out


def read_parameters(path: str | os.PathLike) -> dict[str, str] | None:
    """The parsed A1111 parameters of an image file, or None (none there, or unreadable)."""
    try:
        return metadata.read_png_parameters(path)
    except (OSError, ValueError, SyntaxError):
        return None


# ---- atomic writes --------------------------------------------------------------------------


# A temporary is named ".<target>.<pid>-<random>.de-partial": a save killed half-way leaves
# one behind, and the pid tells a stale one (its editor is gone) from one being written.
TEMP_SUFFIX = ".de-partial"
_TEMP_NAME = re.compile(r"^\..*\.(\d+)-[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$")
_writing: set[str] = set()  # temporaries this process is writing now (any thread)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, ValueError):
        return False  # not a pid at all
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporaries of our own naming in ``folder`` that no live save is writing
    (left by a killed or crashed editor). Returns how many were deleted."""
    removed = 0
    try:
        candidates = list(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    except OSError:
        return 0
    for tmp in candidates:
        m = _TEMP_NAME.match(tmp.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() and str(tmp) in _writing:
            continue
        if pid != os.getpid() and pid_alive(pid):
            continue
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    The temporary is created with mode 0o666, so the kernel applies the umask (mkstemp's
    0o600 would make every saved file private); a replaced file keeps its own mode. Stale
    temporaries of killed saves in the same folder are deleted first."""
    path = Path(path)
    clean_stale_temporaries(path.parent)
    try:
        keep_mode: int | None = path.stat().st_mode & 0o7777
    except OSError:
        keep_mode = None
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    _writing.add(str(tmp))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _writing.discard(str(tmp))
    return path


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
