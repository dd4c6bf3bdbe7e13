"""Image files in and out, for the CLI and the editor alike (Qt-free).

Reading: anything Pillow opens becomes a *writeable* uint8 array — RGB for images (EXIF
orientation applied, alpha and transparency over white, palette, CMYK, greyscale and 16-bit
scaled to 8 bits), HxW for masks, RGBA for stroke layers (alpha kept). Every failure — a
missing, truncated or damaged file, a decompression bomb, a wrong size — is a ``FileError``
with one sentence naming the file.

Writing: ``atomic_write`` writes a temporary file beside the target and renames it into
place, so a crash never leaves half a file; the result's permissions follow the umask (or the
replaced file's); temporaries left by a killed writer are deleted at the next write to that
folder. ``check_output`` refuses, before any work is done, an output that would
replace an input or that cannot be written.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FileError

__all__ = [
    "MAX_PIXELS",
    "FileError",
    "TEMP_SUFFIX",
    "atomic_write",
    "check_output",
    "clean_stale_temporaries",
    "load_image",
    "load_image_bytes",
    "load_mask",
    "load_strokes",
    "pid_alive",
    "to_rgb",
]

MAX_PIXELS = 8192 * 8192
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


# ---- reading --------------------------------------------------------------------------------


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale → 8-bit "L" (Pillow's convert would clip)."""
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        # "I" may hold 8-bit data (some readers widen it); "I;16" is always 16-bit
        top = 65535.0 if im.mode in _SIXTEEN_BIT or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray((arr.clip(0, top) / top * 255).round().astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        return Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8), "L")
    return im


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow image → writeable uint8 HxWx3 RGB (EXIF orientation, alpha over white)."""
    im = _to_8bit(ImageOps.exif_transpose(im))
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.array(im.convert("RGB"), dtype=np.uint8)  # a copy: Pillow's buffer is read-only


def _to_mask(im: Image.Image) -> np.ndarray:
    """Greyscale, 255 = edit; transparent pixels count as black (keep)."""
    im = _to_8bit(ImageOps.exif_transpose(im))
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.array(im.convert("L"), dtype=np.uint8)


def _to_rgba(im: Image.Image) -> np.ndarray:
    im = _to_8bit(ImageOps.exif_transpose(im))
    return np.array(im.convert("RGBA"), dtype=np.uint8)


def _open(source: Any, name: str, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open ``source`` (a path or a file object) and convert it; every failure → FileError."""
    try:
        with Image.open(source) as im:
            if im.width * im.height > MAX_PIXELS:
                raise FileError(
                    f"{name} is {im.width}x{im.height}; images up to 8192x8192 pixels are "
                    "supported."
                )
            im.load()
            return convert(im)
    except FileError:
        raise
    except FileNotFoundError:
        raise FileError(f"{name} does not exist.") from None
    except IsADirectoryError:
        raise FileError(f"{name} is a folder, not an image.") from None
    except PermissionError:
        raise FileError(f"{name} cannot be read: permission denied.") from None
    except UnidentifiedImageError:
        raise FileError(f"{name} is not an image that can be read.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FileError(
            f"{name} claims to be too large to open safely (images up to 8192x8192 pixels "
            "are supported)."
        ) from None
    except MemoryError:
        raise FileError(f"{name} is too large to open in the memory available.") from None
    except Exception as e:  # Pillow's decoders raise many types on damaged data
        raise FileError(f"{name} could not be read; it may be truncated or damaged ({e}).") from e


def _named(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    return path, str(path)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file → writeable uint8 HxWx3 RGB."""
    path, name = _named(path)
    return _open(path, name, to_rgb)


def load_image_bytes(data: bytes, name: str = "pasted image") -> np.ndarray:
    """Encoded image bytes (clipboard, drop) → writeable uint8 HxWx3 RGB."""
    return _open(io.BytesIO(data), f"The {name}", to_rgb)


def _check_size(arr: np.ndarray, name: str, what: str, size: tuple[int, int] | None):
    if size is not None and tuple(arr.shape[:2]) != tuple(size[:2]):
        raise FileError(
            f"The {what} {name} is {arr.shape[1]}x{arr.shape[0]} but the image is "
            f"{size[1]}x{size[0]}; they must be the same size."
        )
    return arr


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file → writeable uint8 HxW (255 = edit); ``size`` (h, w) must match if given."""
    path, name = _named(path)
    return _check_size(_open(path, f"The mask {name}", _to_mask), name, "mask", size)


def load_strokes(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """A stroke layer → writeable uint8 HxWx4 RGBA with its alpha (opaque if it has none)."""
    path, name = _named(path)
    layer = _open(path, f"The stroke layer {name}", _to_rgba)
    return _check_size(layer, name, "stroke layer", size)


# ---- writing --------------------------------------------------------------------------------

# A temporary is named ".<target>.<pid>-<random>.de-partial": a save killed half-way leaves
# one behind, and the pid tells a stale one (its writer is gone) from one being written.
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), what: str = "output"
) -> Path:
    """Refuse an output path that would replace an input or cannot be written, before any
    work is done. Returns the path."""
    path = Path(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise FileError(f"The {what} {path} is an input file; choose another name.")
    if path.is_dir():
        raise FileError(f"The {what} {path} is a folder; give a file name.")
    folder = path.parent
    if not folder.is_dir():
        raise FileError(f"The folder {folder} for the {what} {path.name} does not exist.")
    try:  # the real test: a user may lack the right even where os.access says otherwise
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FileError(
            f"The {what} {path} cannot be written: {e.strerror or e} in the folder {folder}."
        ) from None
    return path
