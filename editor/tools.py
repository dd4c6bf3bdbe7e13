"""Brushes: colour brush, mask brush, eraser, eyedropper — painting into numpy layers.

A stroke touches only the rectangle around each new mouse segment: it computes the brush
coverage there (distance to the segment, so there are no gaps between mouse events),
keeps the maximum coverage seen in this stroke (so overlapping segments do not build up),
and recomposes the layer from its pre-stroke pixels. The pre-stroke pixels are saved
lazily, pixel by pixel, the first time the stroke touches them; at the end the stroke
becomes one ``PatchCommand`` holding only the 128² tiles it touched. Nothing here converts a
whole layer, so painting on a 4096² image costs the same as on a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .document import Document, PatchCommand

COLOUR, MASK, ERASER, EYEDROPPER = "colour", "mask", "eraser", "eyedropper"
TILE = 128  # undo granularity of a stroke, in pixels
TOOLS = (COLOUR, MASK, ERASER, EYEDROPPER)


@dataclass
class Brush:
    size: float = 24.0  # diameter in image pixels
    hardness: float = 0.8  # 1 = hard edge, 0 = soft all the way from the centre
    colour: tuple[int, int, int] = (200, 40, 40)


def coverage(
    y0: int, x0: int, y1: int, x1: int, a: tuple, b: tuple, radius: float, hardness: float
) -> np.ndarray:
    """Brush coverage in [0, 1] over rows y0:y1, cols x0:x1 for a capsule from a to b
    (points in image coordinates; pixel centres at +0.5). Hardness 1 gives a hard edge:
    exactly the pixels whose centre lies closer than ``radius`` to the segment."""
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    ax, ay = a
    vx, vy = b[0] - ax, b[1] - ay
    dx, dy = xs - ax, ys - ay
    len2 = vx * vx + vy * vy
    if len2 > 0:
        t = np.clip((dx * vx + dy * vy) / len2, 0.0, 1.0)
        dx, dy = dx - t * vx, dy - t * vy
    d = np.sqrt(dx * dx + dy * dy)
    if hardness >= 1.0:
        return (d < radius).astype(np.float32)
    inner = radius * max(0.0, hardness)
    c = np.clip((radius - d) / max(radius - inner, 1e-6), 0.0, 1.0)
    return c * c * (3 - 2 * c)  # smoothstep


class Stroke:
    """One press-drag-release on one layer. ``erase`` removes instead of adding."""

    def __init__(self, doc: Document, layer: str, brush: Brush, erase: bool = False):
        self.doc, self.layer, self.brush, self.erase = doc, layer, brush, erase
        arr = doc.layer(layer)
        h, w = arr.shape[:2]
        # np.zeros is lazily allocated by the OS: only touched pages cost memory
        self.cov = np.zeros((h, w), np.float32)
        self.before = np.zeros(arr.shape, arr.dtype)  # not zeros_like: that fills eagerly
        self.saved = np.zeros((h, w), bool)
        self.box: list[int] | None = None  # y0, x0, y1, x1 of everything touched
        self.last: tuple[float, float] | None = None
        self.colour = np.array(brush.colour, np.float32)

    def begin(self, x: float, y: float) -> None:
        self.last = (x, y)
        self._segment((x, y), (x, y))

    def move(self, x: float, y: float) -> None:
        if self.last is None:
            return self.begin(x, y)
        self._segment(self.last, (x, y))
        self.last = (x, y)

    def end(self) -> PatchCommand | None:
        """Finish; pushes and returns the undo command (None if nothing changed)."""
        if self.box is None:
            return None
        arr = self.doc.layer(self.layer)
        patches = []
        y0, x0, y1, x1 = self.box
        for ty in range(y0, y1, TILE):
            for tx in range(x0, x1, TILE):
                sl = np.s_[ty : min(ty + TILE, y1), tx : min(tx + TILE, x1)]
                saved = self.saved[sl]
                if not saved.any():
                    continue
                mask = saved[..., None] if arr.ndim == 3 else saved
                before = np.where(mask, self.before[sl], arr[sl])
                if not np.array_equal(before, arr[sl]):
                    patches.append((ty, tx, before, arr[sl].copy()))
        self.cov = self.before = self.saved = None  # free
        if not patches:
            return None
        verb = "Erase" if self.erase else "Paint"
        cmd = PatchCommand(self.doc, self.layer, patches, f"{verb} {self.layer}", applied=True)
        self.doc.undo_stack.push(cmd)
        return cmd

    # ---- internals ----------------------------------------------------------------------

    def _segment(self, a, b) -> None:
        arr = self.doc.layer(self.layer)
        h, w = arr.shape[:2]
        r = self.brush.size / 2.0
        x0 = max(0, int(np.floor(min(a[0], b[0]) - r)))
        y0 = max(0, int(np.floor(min(a[1], b[1]) - r)))
        x1 = min(w, int(np.ceil(max(a[0], b[0]) + r)) + 1)
        y1 = min(h, int(np.ceil(max(a[1], b[1]) + r)) + 1)
        if x0 >= x1 or y0 >= y1:
            return
        c = coverage(y0, x0, y1, x1, a, b, r, self.brush.hardness)
        cov = self.cov[y0:y1, x0:x1]
        np.maximum(cov, c, out=cov)
        touched = cov > 0
        if not touched.any():
            return
        # save pre-stroke pixels the first time the stroke reaches them
        saved = self.saved[y0:y1, x0:x1]
        new = touched & ~saved
        region, before = arr[y0:y1, x0:x1], self.before[y0:y1, x0:x1]
        expand = (lambda m: m[..., None]) if arr.ndim == 3 else (lambda m: m)
        np.copyto(before, region, where=expand(new))
        saved |= new
        np.copyto(region, self._compose(before, cov), where=expand(touched))
        if self.box is None:
            self.box = [y0, x0, y1, x1]
        else:
            b_ = self.box
            self.box = [min(b_[0], y0), min(b_[1], x0), max(b_[2], y1), max(b_[3], x1)]
        self.doc.notify(self.layer, y0, x0, y1, x1)

    def _compose(self, before: np.ndarray, c: np.ndarray) -> np.ndarray:
        """New pixel values of a region from its pre-stroke values and coverage."""
        if self.layer == "mask":
            m = before.astype(np.float32)
            out = m * (1 - c) if self.erase else m + (255.0 - m) * c
            return (out + 0.5).astype(np.uint8)
        px = before.astype(np.float32)
        a0 = px[..., 3] * (1 / 255.0)
        out = px
        if self.erase:
            out[..., 3] = a0 * (1 - c) * 255.0
        else:
            a = a0 + c * (1 - a0)
            inv = 1.0 / np.where(a > 0, a, 1.0)
            keep = (a0 * (1 - c) * inv)[..., None]
            out[..., :3] = px[..., :3] * keep + self.colour * (c * inv)[..., None]
            out[..., 3] = a * 255.0
        return (np.clip(out, 0, 255) + 0.5).astype(np.uint8)


def pick_colour(doc: Document, x: float, y: float) -> tuple[int, int, int] | None:
    """The visible colour (image with strokes over it) at an image point."""
    h, w = doc.size
    xi, yi = int(x), int(y)
    if not (0 <= xi < w and 0 <= yi < h):
        return None
    base = doc.image[yi, xi].astype(np.float32)
    s = doc.strokes[yi, xi].astype(np.float32)
    a = s[3] / 255.0
    rgb = base * (1 - a) + s[:3] * a
    return tuple(int(round(v)) for v in rgb)
