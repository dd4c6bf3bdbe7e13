"""Brushes: colour brush, mask brush, eraser, eyedropper — painting into numpy layers.

A stroke touches only the rectangle around each new mouse segment: it computes the brush
coverage there (distance to the segment, so there are no gaps between mouse events),
keeps the maximum coverage seen in this stroke (so overlapping segments do not build up),
and recomposes the layer from its pre-stroke pixels. The pre-stroke pixels are saved per
128² tile the first time the stroke reaches it; at the end the stroke becomes one
``PatchCommand`` holding only those tiles. Nothing here converts or scans a whole layer,
so painting and releasing on a 4096² image cost the same as on a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .document import Document, PatchCommand, bbox

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
    """One press-drag-release on one layer. ``erase`` removes instead of adding.

    State lives in 128² tiles created when the brush first reaches them: the tile's
    pre-stroke pixels and the stroke's coverage there. Dense tiles touch few memory pages
    (a full-size row-major buffer would fault a page per row per brush dab), and the
    release turns exactly those tiles into the undo command."""

    def __init__(self, doc: Document, layer: str, brush: Brush, erase: bool = False):
        self.doc, self.layer, self.brush, self.erase = doc, layer, brush, erase
        self.tiles: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
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
        arr = self.doc.layer(self.layer)
        patches = []
        for (ty, tx), (before, cov) in sorted(self.tiles.items()):
            box = bbox(cov > 0)  # keep only the painted part of the tile
            if box is None:
                continue
            y0, x0, y1, x1 = box
            part = before[y0:y1, x0:x1]
            if np.array_equal(part, arr[ty + y0 : ty + y1, tx + x0 : tx + x1]):
                continue  # painted over with what was there: nothing to undo
            if part.size * 2 < before.size:
                part = part.copy()  # let the rest of the tile go
            patches.append((ty + y0, tx + x0, part, None))  # after: read on the first undo
        self.tiles = {}
        if not patches:
            return None
        verb = "Erase" if self.erase else "Paint"
        cmd = PatchCommand(self.doc, self.layer, patches, f"{verb} {self.layer}")
        self.doc.push(cmd, done=True)
        return cmd

    # ---- internals ----------------------------------------------------------------------

    def _tile(self, arr: np.ndarray, ty: int, tx: int) -> tuple[np.ndarray, np.ndarray]:
        """(pre-stroke pixels, coverage) of the tile at (ty, tx), made on first use."""
        state = self.tiles.get((ty, tx))
        if state is None:
            before = arr[ty : ty + TILE, tx : tx + TILE].copy()
            state = self.tiles[(ty, tx)] = (before, np.zeros(before.shape[:2], np.float32))
        return state

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
        expand = (lambda m: m[..., None]) if arr.ndim == 3 else (lambda m: m)
        for ty in range(y0 - y0 % TILE, y1, TILE):
            for tx in range(x0 - x0 % TILE, x1, TILE):
                sy0, sy1, sx0, sx1 = (
                    max(y0, ty),
                    min(y1, ty + TILE),
                    max(x0, tx),
                    min(x1, tx + TILE),
                )
                ct = c[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
                if not ct.any():
                    continue  # the segment's box reaches this tile, the brush does not
                before, cov = self._tile(arr, ty, tx)
                local = np.s_[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
                cv = cov[local]
                np.maximum(cv, ct, out=cv)
                touched = expand(cv > 0)
                np.copyto(arr[sy0:sy1, sx0:sx1], self._compose(before[local], cv), where=touched)
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
