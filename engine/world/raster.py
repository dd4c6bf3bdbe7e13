"""Rasteriser for the demo world: scene graph -> supersampled image + exact label map.

Everything is vectorised numpy on coordinate windows (no per-pixel Python). The scene is
drawn at ``SUPERSAMPLE``x resolution, back to front, into a float RGB buffer and an ``owner``
label buffer; shapes get analytic soft edges (signed distance -> one-subpixel ramp), so the
box-filtered downsample is anti-aliased. A subpixel belongs to a shape when its coverage is
>= 0.5; an output pixel gets the label owning most of its subpixels (ties go to the later
drawn label), so the per-name masks at output resolution are exact, disjoint and cover the
image. Coordinates are normalised: x in [0, 1] left to right, y in [0, 1] top to bottom.

The geometry helpers here (``ridge_profile``, ``object_extent``) are shared with the sampler
in ``scene.py`` so that placement and rendering agree.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

SUPERSAMPLE = 2  # Canvas.downsample assumes 2x2 blocks

# Label ids in drawing order (ties in the downsample go to the higher id = drawn later).
SKY, CELESTIAL, MOUNTAINS, GROUND, WATER = 0, 1, 2, 3, 4
FIRST_OBJECT_LABEL = 5


def _c(rgb) -> np.ndarray:
    """An RGB colour as a planar (3, 1, 1) float32 array (the canvas is channel-first)."""
    return np.asarray(rgb, np.float32).reshape(3, 1, 1)


# Light colour multiplying everything lit by the sun/moon (not the sky itself).
LIGHT = {
    "day": _c([1.0, 1.0, 0.97]),
    "sunset": _c([1.06, 0.84, 0.68]),
    "night": _c([0.3, 0.34, 0.5]),
}
GLOW = {"day": (0.35, 0.3, 0.2), "sunset": (0.6, 0.35, 0.15), "night": (0.1, 0.12, 0.16)}
# Objects get a milder tint so their colours stay recognisable (a white house stays white).
OBJECT_LIGHT = {
    "day": _c([1.0, 1.0, 0.97]),
    "sunset": _c([1.04, 0.93, 0.86]),
    "night": _c([0.52, 0.54, 0.66]),
}
# Sky gradient (zenith, horizon).
SKY_COLOURS = {
    "day": ((0.16, 0.38, 0.78), (0.66, 0.82, 0.96)),
    "sunset": ((0.3, 0.22, 0.5), (1.0, 0.58, 0.38)),
    "night": ((0.01, 0.02, 0.07), (0.07, 0.1, 0.22)),
}
GROUND_COLOURS = {
    "grass": (0.3, 0.56, 0.2),
    "sand": (0.86, 0.74, 0.5),
    "snow": (0.92, 0.94, 0.98),
}
WATER_COLOUR = _c([0.08, 0.22, 0.32])
WALL_RGB = {
    "red": (0.78, 0.14, 0.12),
    "white": (0.93, 0.92, 0.88),
    "yellow": (0.95, 0.8, 0.18),
    "blue": (0.2, 0.38, 0.8),
}
ROOF_RGB = {
    "red": (0.72, 0.12, 0.08),
    "brown": (0.45, 0.27, 0.12),
    "grey": (0.55, 0.56, 0.58),
    "black": (0.1, 0.1, 0.11),
}
PINE_GREEN = _c([0.1, 0.36, 0.2])
LEAF_GREEN = _c([0.24, 0.55, 0.16])
TRUNK = _c([0.38, 0.24, 0.12])
ROCK_GREY = _c([0.5, 0.49, 0.47])
HULL = _c([0.5, 0.25, 0.12])
SAIL = _c([0.96, 0.95, 0.9])


# --------------------------------------------------------------------------- geometry shared


def object_extent(kind: str, unit: float) -> tuple[float, float]:
    """(width, height) of an object of ``kind`` whose size unit is ``unit`` (normalised)."""
    w, h = {
        "pine_tree": (0.6, 1.25),
        "round_tree": (0.85, 1.15),
        "house": (1.15, 0.9),
        "rock": (0.65, 0.38),
        "boat": (0.95, 1.0),
    }[kind]
    return w * unit, h * unit


def depth_unit(y: float, horizon: float) -> float:
    """Size unit of an object standing at ground height ``y``: nearer (lower) is bigger."""
    return 0.07 + 0.6 * (y - horizon)


def _midpoint_displacement(rng: np.random.Generator, levels: int, roughness: float) -> np.ndarray:
    n = 2**levels
    h = np.zeros(n + 1, np.float64)
    h[0], h[-1] = rng.uniform(-0.5, 0.5, 2)
    step, amp = n, 1.0
    while step > 1:
        half = step // 2
        mids = 0.5 * (h[0:-1:step] + h[step::step])
        h[half::step] = mids + rng.uniform(-amp, amp, mids.shape)
        step, amp = half, amp * roughness
    return h


def ridge_profile(seed: int, base: float, amplitude: float, roughness: float, xs: np.ndarray):
    """Top y of a fractal mountain ridge at normalised columns ``xs`` (smaller y = higher)."""
    rng = np.random.default_rng([seed, 7])
    h = _midpoint_displacement(rng, 6, roughness)
    # One or two broad peaks so ridges read as mountains rather than noise.
    t = np.linspace(0.0, 1.0, h.size)
    c = rng.uniform(0.15, 0.85, 2)
    w = rng.uniform(0.15, 0.35, 2)
    peaks = np.exp(-(((t - c[0]) / w[0]) ** 2)) + 0.7 * np.exp(-(((t - c[1]) / w[1]) ** 2))
    prof = 0.6 * peaks + 0.4 * (h - h.min()) / max(np.ptp(h), 1e-6)
    prof = (prof - prof.min()) / max(np.ptp(prof), 1e-6)
    return base - amplitude * np.interp(xs, t, prof)


# --------------------------------------------------------------------------- noise textures


def _value_noise(rng: np.random.Generator, shape, cells) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for cy, cx in cells:
        grid = rng.standard_normal((cy, cx)).astype(np.float32)
        img = Image.fromarray(grid, mode="F").resize((shape[1], shape[0]), Image.BICUBIC)
        out += amp * np.asarray(img)
        total += amp
        amp *= 0.6
    out /= total
    return out / (np.abs(out).max() + 1e-6)


@lru_cache(maxsize=4)
def noise_bank(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed (2S, 2S) noise textures in [-1, 1]: isotropic, and horizontally streaked."""
    rng = np.random.default_rng(20240601)
    n = 2 * S
    iso = _value_noise(rng, (n, n), [(c, c) for c in (8, 16, 32, 64, 128)])
    streak = _value_noise(rng, (n, n), [(c, max(2, c // 8)) for c in (32, 64, 128, 256)])
    return iso, streak


# --------------------------------------------------------------------------- canvas


def _smooth_cov(d: np.ndarray, S: int) -> np.ndarray:
    """Coverage of a shape from its signed distance ``d`` (normalised units, < 0 inside)."""
    return np.clip(0.5 - d * S, 0.0, 1.0)


def _poly_sdf(X: np.ndarray, Y: np.ndarray, pts) -> np.ndarray:
    """Signed distance (exact inside, bounded outside) of a convex polygon, half-plane max."""
    n = len(pts)
    area = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))
    if area < 0:
        pts = pts[::-1]
    d = None
    for i in range(len(pts)):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % len(pts)]
        ex, ey = x1 - x0, y1 - y0
        ln = np.hypot(ex, ey) + 1e-12
        # Outward normal of a counter-clockwise (in x-right, y-down: clockwise on screen) edge.
        nx, ny = ey / ln, -ex / ln
        di = (X - x0) * nx + (Y - y0) * ny
        d = di if d is None else np.maximum(d, di)
    return d


class Canvas:
    """Supersampled float RGB buffer plus a uint8 owner-label buffer."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.S = S = size * SUPERSAMPLE
        self.img = np.zeros((3, S, S), np.float32)  # planar RGB: fast numpy broadcasting
        self.owner = np.zeros((S, S), np.uint8)
        self.coords = (np.arange(S, dtype=np.float32) + 0.5) / S
        self.rng = rng
        iso, streak = noise_bank(S)
        oy, ox = rng.integers(0, S, 2)
        self.noise = iso[oy : oy + S, ox : ox + S]
        oy, ox = rng.integers(0, S, 2)
        self.streak = streak[oy : oy + S, ox : ox + S]
        self.area: dict[int, int] = {}

    def window(self, x0: float, x1: float, y0: float, y1: float):
        """Pixel slices for a normalised box (clipped) and its broadcast grids X (1,w), Y (h,1)."""
        S = self.S
        c0, c1 = max(0, int(np.floor(x0 * S)) - 1), min(S, int(np.ceil(x1 * S)) + 1)
        r0, r1 = max(0, int(np.floor(y0 * S)) - 1), min(S, int(np.ceil(y1 * S)) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return (
            slice(r0, r1),
            slice(c0, c1),
            self.coords[c0:c1][None, :],
            self.coords[r0:r1][:, None],
        )

    def paint(self, rs, cs, cov, colour, label=None):
        """Alpha-blend ``colour`` (3,1,1) or (3,h,w) with coverage ``cov`` (h,w) into a window."""
        win = self.img[:, rs, cs]
        win += cov * (colour - win)
        if label is not None:
            self.owner[rs, cs][cov >= 0.5] = label

    def downsample(self) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB image (box filter) and uint8 label map at output resolution.

        An output pixel takes the label owning most of its 2x2 subpixels; ties go to the
        higher (later drawn) label. Score = count * 64 + label, so the max score's low bits
        are the winning label.
        """
        o, im = self.owner, self.img
        img = im[:, 0::2, 0::2] + im[:, 0::2, 1::2] + im[:, 1::2, 0::2] + im[:, 1::2, 1::2]
        img = (np.clip(img * (255.0 / 4), 0.0, 255.0) + 0.5).astype(np.uint8).transpose(1, 2, 0)
        subs = [o[0::2, 0::2], o[0::2, 1::2], o[1::2, 0::2], o[1::2, 1::2]]
        best = None
        for a in subs:
            score = a.astype(np.int16)
            for b in subs:
                score += (a == b).astype(np.int16) << 6
            best = score if best is None else np.maximum(best, score)
        return img, (best & 63).astype(np.uint8)


# --------------------------------------------------------------------------- layers


def draw_sky(cv: Canvas, scene) -> None:
    top, bottom = (_c(c) for c in SKY_COLOURS[scene.time_of_day])
    t = np.clip(cv.coords / max(scene.horizon, 1e-3), 0, 1) ** 1.4
    col = top + t[None, :, None] * (bottom - top)  # (3, S, 1)
    shade = 0.015 * cv.noise
    c = scene.celestial
    if c is not None:
        # Glow around the sun / moon (colour only; the disc is drawn later). Separable Gaussian.
        sig = c.radius * 4.0
        gx = np.exp(-(((cv.coords - c.x) / sig) ** 2))
        gy = np.exp(-(((cv.coords - c.y) / sig) ** 2))
        np.multiply(gy[:, None] * gx[None, :], _c(GLOW[scene.time_of_day]), out=cv.img)
        cv.img += col
    else:
        cv.img[:] = col
    cv.img += shade
    if scene.time_of_day == "night":
        rng = np.random.default_rng([scene.seed, 11])
        n = int(rng.integers(60, 140))
        ys = (rng.random(n) ** 1.3 * scene.horizon * cv.S).astype(int)
        xs = rng.integers(0, cv.S - 1, n)
        b = rng.uniform(0.35, 1.0, n).astype(np.float32)[None, :]
        big = rng.random(n) < 0.35
        star = np.array([0.95, 0.95, 1.0], np.float32)[:, None] * b
        yb = np.minimum(ys + 1, cv.S - 1)
        for yy, xx, st in (
            (ys, xs, star),
            (ys[big], xs[big] + 1, star[:, big]),
            (yb[big], xs[big], star[:, big]),
        ):
            cv.img[:, yy, xx] = np.maximum(cv.img[:, yy, xx], st)


def draw_celestial(cv: Canvas, scene) -> None:
    c = scene.celestial
    win = cv.window(c.x - c.radius, c.x + c.radius, c.y - c.radius, c.y + c.radius)
    if win is None:
        return
    rs, cs, X, Y = win
    dist = np.sqrt((X - c.x) ** 2 + (Y - c.y) ** 2)
    cov = _smooth_cov(dist - c.radius, cv.S)
    if c.kind == "sun":
        core = (1.0, 0.98, 0.88) if scene.time_of_day == "day" else (1.0, 0.62, 0.3)
        col = _c(core)
    else:
        shade = 0.9 - 0.12 * np.clip(cv.noise[rs, cs] * 1.5, 0, 1)
        limb = 1.0 - 0.15 * (dist / c.radius) ** 2
        col = (shade * limb)[None] * _c([0.95, 0.94, 0.86])
    cv.paint(rs, cs, cov, col, CELESTIAL)


def draw_cloud(cv: Canvas, scene, cloud) -> None:
    rng = np.random.default_rng([cloud.seed, 3])
    w, h = cloud.width, cloud.height
    win = cv.window(cloud.x - 0.65 * w, cloud.x + 0.65 * w, cloud.y - 1.5 * h, cloud.y + 0.01)
    if win is None:
        return
    rs, cs, X, Y = win
    f = np.full(np.broadcast_shapes(X.shape, Y.shape), -1.0, np.float32)
    k = int(rng.integers(4, 7))
    bx = cloud.x + (rng.random(k) - 0.5) * w * 0.62
    rx = rng.uniform(0.16, 0.26, k) * w
    ry = rng.uniform(0.45, 0.85, k) * h
    by = cloud.y - ry * rng.uniform(0.3, 0.55, k)
    for i in range(k):
        f = np.maximum(f, 1.0 - ((X - bx[i]) / rx[i]) ** 2 - ((Y - by[i]) / ry[i]) ** 2)
    f = f + 0.18 * cv.noise[rs, cs]
    alpha = np.clip(f / 0.45, 0, 1) * np.clip((cloud.y - Y) / (0.25 * h), 0, 1) * 0.92
    t = np.clip((cloud.y - Y) / h, 0, 1)  # 0 at the flat bottom, 1 at the top
    lit, under = {
        "day": ((1.0, 1.0, 1.0), (0.74, 0.78, 0.86)),
        "sunset": ((1.0, 0.78, 0.66), (0.66, 0.42, 0.5)),
        "night": ((0.24, 0.26, 0.34), (0.1, 0.11, 0.17)),
    }[scene.time_of_day]
    lit, under = _c(lit), _c(under)
    col = under + t[None] * (lit - under)
    cv.paint(rs, cs, alpha, col, SKY)


def _smooth(a: np.ndarray, k: int) -> np.ndarray:
    """Box-smoothed 1-D array (edge-padded), same length."""
    pad = np.pad(a, k, mode="edge")
    c = np.cumsum(pad, dtype=np.float64)
    return ((c[2 * k :] - np.concatenate([[0.0], c[: -2 * k - 1]])) / (2 * k + 1)).astype(a.dtype)


def draw_ridges(cv: Canvas, scene) -> None:
    S = cv.S
    light = LIGHT[scene.time_of_day]
    sky_h = _c(SKY_COLOURS[scene.time_of_day][1])
    sun_x = scene.celestial.x if scene.celestial is not None else 0.3
    side = 1.0 if sun_x > 0.5 else -1.0
    n = len(scene.ridges)
    for i, r in enumerate(scene.ridges):
        top = ridge_profile(r.seed, r.base, r.amplitude, r.roughness, cv.coords).astype(np.float32)
        y0 = float(top.min())
        win = cv.window(0.0, 1.0, y0, scene.horizon + 0.01)
        if win is None:
            continue
        rs, cs, X, Y = win
        slope = np.gradient(top) * S  # dy/dx in normalised units
        cov = np.clip(0.5 + (Y - top[None, :]) * S / np.sqrt(1 + slope**2)[None, :], 0, 1)
        cov *= np.clip(0.5 + (scene.horizon + 0.004 - Y) * S, 0, 1)
        # Slope lighting from a smoothed profile, fading with depth below the crest: faces
        # turned towards the sun are brighter.
        facing = np.tanh(-_smooth(slope, S // 24) * side * 0.8)
        depth = np.clip((Y - top[None, :]) / max(scene.horizon - y0, 1e-3), 0, 1)
        nz = cv.noise[rs, cs]
        shade = 0.8 + 0.3 * facing[None, :] * (1 - 0.6 * depth) + 0.08 * nz - 0.2 * depth
        rock = _c([0.45, 0.42, 0.42] if i == n - 1 else [0.4, 0.42, 0.5])
        col = shade[None] * rock * light
        if scene.snow_caps:
            line = y0 + (scene.horizon - y0) * 0.3
            snow = Y < line + 0.03 * nz + 0.35 * (top[None, :] - y0) * (0.6 + 0.4 * nz)
            snow_shade = 0.84 + 0.2 * facing[None, :] + 0.04 * nz
            snow_col = snow_shade[None] * _c([0.95, 0.96, 1.0])
            col = np.where(snow[None], snow_col * light, col)
        # Atmospheric perspective: far ridges fade into the horizon colour.
        haze = 0.45 if (n == 2 and i == 0) else 0.2
        col = col + haze * (sky_h * (0.8 if scene.time_of_day != "night" else 0.6) - col)
        cv.paint(rs, cs, cov, col, MOUNTAINS)


def _ground_colour(scene, cv: Canvas, rs, cs, Y):
    light = LIGHT[scene.time_of_day]
    base = _c(GROUND_COLOURS[scene.ground])
    far = np.clip((Y - scene.horizon) / (1 - scene.horizon), 0, 1)  # 0 far, 1 near
    nz, st = cv.noise[rs, cs], cv.streak[rs, cs]
    if scene.ground == "grass":
        shade = 0.8 + 0.25 * far + 0.14 * nz + 0.1 * st
        col = shade[None] * base
        col[0] += 0.06 * nz * (1 - far)
    elif scene.ground == "sand":
        dunes = np.sin(Y * 60 + 4 * nz) * 0.05
        shade = 0.86 + 0.14 * far + 0.06 * nz + dunes
        col = shade[None] * base
    else:  # snow: white with blue shadows
        shade = 0.86 + 0.1 * far + 0.06 * nz
        col = shade[None] * base
        col[:2] -= (0.06 * np.clip(st, 0, 1))[None]
    col = col * light
    if scene.time_of_day != "night":
        sky_h = _c(SKY_COLOURS[scene.time_of_day][1])
        col += (0.25 * (1 - far))[None] * (sky_h * 0.8 - col)
    return col


def draw_land(cv: Canvas, scene) -> None:
    h = scene.horizon
    xs = cv.coords
    tops = []
    for hill in scene.hills:
        wave = 0.55 + 0.45 * np.sin(xs * hill.freq * 2 * np.pi + hill.phase)
        wave = wave * (0.7 + 0.3 * np.sin(xs * hill.freq * 5.3 + hill.phase * 2))
        tops.append((h - hill.amplitude * wave).astype(np.float32))
    y0 = min([h] + [float(t.min()) for t in tops])
    rs, cs, X, Y = cv.window(0.0, 1.0, y0, 1.0)
    Yc = np.maximum(Y, h) + 0 * X
    col = _ground_colour(scene, cv, rs, cs, Yc)
    k = int(np.searchsorted(Y[:, 0], h + 0.01))  # hills only matter above the horizon
    hrs = slice(rs.start, rs.start + k)
    for hill, top in zip(scene.hills, tops, strict=True):
        slope = np.gradient(top) * cv.S
        cov = np.clip(0.5 + (Y[:k] - top[None, :]) * cv.S / np.sqrt(1 + slope**2)[None, :], 0, 1)
        light = hill.shade * (0.92 + 0.1 * np.clip(-slope, -1, 1))
        cv.paint(hrs, cs, cov, col[:, :k] * light[None, None, :], GROUND)
    cov = np.clip(0.5 + (Y - h) * cv.S, 0, 1) + 0 * X
    cv.paint(rs, cs, cov, col, GROUND)


def draw_water(cv: Canvas, scene) -> None:
    S, h = cv.S, scene.horizon
    hy = int(round(h * S))
    rows = np.arange(hy, S)
    dist = ((rows - hy + 0.5) / max(S - hy, 1)).astype(np.float32)  # 0 horizon .. 1 bottom
    cols = np.arange(S)
    wob = cv.streak[hy:S, :] * (1.5 + 5.0 * dist[:, None])
    src_c = np.clip(cols[None, :] + np.round(wob).astype(int), 0, S - 1)
    src_r = np.clip(2 * hy - 1 - rows[:, None] + np.round(wob * 0.3).astype(int), 0, hy - 1)
    refl = cv.img[:, src_r, src_c]
    fresnel = (0.8 - 0.45 * dist)[:, None].astype(np.float32)
    light = LIGHT[scene.time_of_day]
    tint = WATER_COLOUR * light + 0.12 * _c(SKY_COLOURS[scene.time_of_day][1])
    col = tint + fresnel * (refl * 0.85 - tint)
    ripple = 1.0 + 0.12 * cv.streak[hy:S, :] * (0.3 + dist[:, None])
    col = col * ripple[None]
    cov = np.ones((S - hy, S), np.float32)
    cv.paint(slice(hy, S), slice(0, S), cov, col.astype(np.float32), WATER)


def _side_shade(X, x0, x1, sun_x, strength=0.25):
    """Horizontal lighting across an object: the side facing the sun is brighter."""
    t = np.clip((X - x0) / max(x1 - x0, 1e-6), 0, 1) - 0.5
    return 1.0 + strength * t * (1 if sun_x > 0.5 else -1)


def draw_object(cv: Canvas, scene, obj, label: int) -> int:
    """Draw one object with owner ``label``; return how many subpixels it owns afterwards.

    The shadow, window and shading are common; the shape is its kind's drawer's (each takes
    the keywords it reads: the window ``X``/``Y``, noise ``nz``, sun-side shading ``side``,
    ``light``, extent ``w``/``h``/``x0``/``x1``/``ytop``/``ybot`` and ``put``)."""
    unit = depth_unit(obj.y, scene.horizon)
    w, h = object_extent(obj.kind, unit)
    light = OBJECT_LIGHT[scene.time_of_day]
    sun_x = scene.celestial.x if scene.celestial is not None else 0.3
    rng = np.random.default_rng([obj.seed, 5])
    x0, x1, ytop, ybot = obj.x - w / 2, obj.x + w / 2, obj.y - h, obj.y
    S = cv.S
    # Soft contact shadow on the ground (colour only, owner stays ground/water).
    win = cv.window(x0 - 0.1 * w, x1 + 0.1 * w, ybot - 0.06 * h, ybot + 0.06 * h)
    if win is not None:
        rs, cs, X, Y = win
        e = ((X - obj.x) / (0.6 * w)) ** 2 + ((Y - ybot) / (0.05 * h + 1.5 / S)) ** 2
        a = 0.35 * np.clip(1 - e, 0, 1)
        cv.paint(rs, cs, a, _c([0.0, 0.0, 0.0]))
    win = cv.window(x0, x1, ytop, ybot + 0.01)
    if win is None:
        return 0
    rs, cs, X, Y = win
    nz = cv.noise[rs, cs]
    side = _side_shade(X, x0, x1, sun_x)

    def put(d, colour):  # paint a shape (signed distance d) as this object
        cv.paint(rs, cs, _smooth_cov(d, S), colour, label)

    OBJECT_DRAWERS[obj.kind](
        scene=scene,
        obj=obj,
        rng=rng,
        X=X,
        Y=Y,
        nz=nz,
        side=side,
        light=light,
        w=w,
        h=h,
        x0=x0,
        x1=x1,
        ytop=ytop,
        ybot=ybot,
        S=S,
        put=put,
    )
    return int(np.count_nonzero(cv.owner[rs, cs] == label))


def _draw_pine_tree(*, obj, rng, X, Y, nz, side, light, w, h, ytop, ybot, put, **_) -> None:
    tw = 0.12 * w
    put(
        _poly_sdf(
            X,
            Y,
            [
                (obj.x - tw / 2, ybot - 0.25 * h),
                (obj.x + tw / 2, ybot - 0.25 * h),
                (obj.x + tw / 2, ybot),
                (obj.x - tw / 2, ybot),
            ],
        ),
        (TRUNK * light * (side * 0.9 + 0.05 * nz)[None]),
    )
    green = PINE_GREEN * (1 + 0.15 * rng.uniform(-1, 1))
    for j, (top, bot, wf) in enumerate(((0.0, 0.45, 0.55), (0.2, 0.68, 0.78), (0.4, 0.85, 1.0))):
        yt, yb = ytop + top * h, ytop + bot * h
        d = _poly_sdf(X, Y, [(obj.x, yt), (obj.x + wf * w / 2, yb), (obj.x - wf * w / 2, yb)])
        shade = side * (0.9 + 0.1 * j) + 0.12 * nz
        put(d, green * light * shade[None])


def _draw_round_tree(*, obj, rng, X, Y, nz, side, light, w, h, ytop, ybot, put, **_) -> None:
    tw = 0.13 * w
    put(
        _poly_sdf(
            X,
            Y,
            [
                (obj.x - tw / 2, ybot - 0.45 * h),
                (obj.x + tw / 2, ybot - 0.45 * h),
                (obj.x + tw * 0.7, ybot),
                (obj.x - tw * 0.7, ybot),
            ],
        ),
        TRUNK * light * side[None],
    )
    cx = obj.x + np.array([0.0, -0.22, 0.22, 0.0]) * w + rng.uniform(-0.04, 0.04, 4) * w
    cy = ytop + np.array([0.3, 0.45, 0.45, 0.55]) * h
    rr = np.array([0.3, 0.26, 0.26, 0.27]) * w * rng.uniform(0.92, 1.05, 4)
    d = None
    for i in range(4):
        di = np.sqrt((X - cx[i]) ** 2 + (Y - cy[i]) ** 2) - rr[i]
        d = di if d is None else np.minimum(d, di)
    d = d + 0.012 * w * nz
    up = np.clip((Y - ytop) / (0.75 * h), 0, 1)
    shade = side * (1.12 - 0.3 * up) + 0.12 * nz
    green = LEAF_GREEN * (1 + 0.12 * rng.uniform(-1, 1))
    put(d, green * light * shade[None])


def _draw_house(*, scene, obj, X, Y, nz, light, w, h, x0, x1, ybot, S, put, **_) -> None:
    over = 0.03 * w  # roof overhang, kept inside the object's extent
    bx0, bx1 = x0 + over, x1 - over
    fw, dw = 0.5 * (bx1 - bx0), 0.5 * (bx1 - bx0)  # gable front width, side depth
    wall_h, roof_h = 0.55 * h, 0.45 * h
    fx0 = bx0 if not obj.flip else bx1 - fw
    fx1 = fx0 + fw
    sx0, sx1 = (fx1, bx1) if not obj.flip else (bx0, fx0)
    ywt = ybot - wall_h
    apex = ((fx0 + fx1) / 2, ybot - wall_h - roof_h)
    wall = _c(WALL_RGB[obj.wall]) * light
    roof = _c(ROOF_RGB[obj.roof]) * light
    tex = (1.0 + 0.06 * nz)[None]
    # Side wall (a little darker), gable front (wall + gable triangle), roof plane.
    put(_poly_sdf(X, Y, [(sx0, ywt), (sx1, ywt), (sx1, ybot), (sx0, ybot)]), wall * 0.8 * tex)
    front = _poly_sdf(X, Y, [(fx0, ywt), (fx1, ywt), (fx1, ybot), (fx0, ybot)])
    front = np.minimum(  # union of the wall rectangle and the gable triangle
        front, _poly_sdf(X, Y, [(fx0, ywt + 0.5 / S), apex, (fx1, ywt + 0.5 / S)])
    )
    put(front, wall * tex)
    far_x = sx1 if not obj.flip else sx0
    ax2 = apex[0] + (far_x - (fx1 if not obj.flip else fx0))
    near_eave = (fx1 + over * 0.3, ywt + over) if not obj.flip else (fx0 - over * 0.3, ywt + over)
    far_eave = (far_x + (over if not obj.flip else -over), ywt + over)  # within [x0, x1]
    roof_pts = [apex, (ax2, apex[1]), far_eave, near_eave]
    rshade = (1.0 + 0.08 * nz - 0.12 * np.clip((Y - apex[1]) / roof_h, 0, 1))[None]
    put(_poly_sdf(X, Y, roof_pts), roof * rshade)
    # Door and a window on the gable front, a window on the side.
    dx = (fx0 + fx1) / 2
    dwid, dht = 0.22 * fw, 0.5 * wall_h
    put(
        _poly_sdf(
            X,
            Y,
            [
                (dx - dwid / 2, ybot - dht),
                (dx + dwid / 2, ybot - dht),
                (dx + dwid / 2, ybot),
                (dx - dwid / 2, ybot),
            ],
        ),
        _c([0.3, 0.18, 0.1]) * light,
    )
    lit = scene.time_of_day == "night"
    win_col = _c([1.0, 0.85, 0.4] if lit else [0.2, 0.26, 0.34])
    if not lit:
        win_col = win_col * light
    wx = (sx0 + sx1) / 2
    ws = 0.24 * min(dw, wall_h)
    wy = ybot - 0.6 * wall_h
    put(
        _poly_sdf(
            X,
            Y,
            [
                (wx - ws, wy - ws * 0.8),
                (wx + ws, wy - ws * 0.8),
                (wx + ws, wy + ws * 0.8),
                (wx - ws, wy + ws * 0.8),
            ],
        ),
        win_col,
    )


def _draw_rock(*, obj, X, Y, nz, side, light, w, h, ybot, put, **_) -> None:
    e = np.sqrt(((X - obj.x) / (w / 2)) ** 2 + ((Y - ybot) / h) ** 2)
    d = (e - 1.0) * min(w / 2, h) + 0.06 * h * nz
    d = np.maximum(d, Y - ybot)
    up = np.clip((ybot - Y) / h, 0, 1)
    shade = side * (0.75 + 0.35 * up) + 0.15 * nz
    put(d, ROCK_GREY * light * shade[None])


def _draw_boat(*, obj, X, Y, nz, side, light, w, h, x0, x1, ytop, ybot, S, put, **_) -> None:
    hull_h = 0.22 * h
    yh = ybot - hull_h
    hull = [(x0, yh), (x1, yh), (x1 - 0.18 * w, ybot), (x0 + 0.15 * w, ybot)]
    mx = obj.x - 0.05 * w if not obj.flip else obj.x + 0.05 * w
    mw = max(0.035 * w, 0.6 / S)
    put(
        _poly_sdf(X, Y, [(mx - mw, ytop), (mx + mw, ytop), (mx + mw, yh), (mx - mw, yh)]),
        TRUNK * light,
    )
    sd = 1 if not obj.flip else -1
    sail = [
        (mx + sd * mw, ytop + 0.03 * h),
        (mx + sd * mw, yh - 0.06 * h),
        (mx + sd * 0.42 * w, yh - 0.06 * h),
    ]
    put(_poly_sdf(X, Y, sail), SAIL * light * (side + 0.04 * nz)[None])
    sail2 = [
        (mx - sd * mw, ytop + 0.2 * h),
        (mx - sd * mw, yh - 0.06 * h),
        (mx - sd * 0.3 * w, yh - 0.06 * h),
    ]
    put(_poly_sdf(X, Y, sail2), SAIL * light * 0.88 * (side + 0.04 * nz)[None])
    put(_poly_sdf(X, Y, hull), HULL * light * (side + 0.08 * nz)[None])


# One small drawer per object kind (scene.OBJECT_KINDS).
OBJECT_DRAWERS: dict[str, Callable[..., None]] = {
    "pine_tree": _draw_pine_tree,
    "round_tree": _draw_round_tree,
    "house": _draw_house,
    "rock": _draw_rock,
    "boat": _draw_boat,
}


def rasterise(scene, size: int) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Draw ``scene``; return (uint8 HxWx3 image, uint8 HxW label map, label -> drawn subpixels).

    Labels: ``SKY``..``WATER`` for regions, ``FIRST_OBJECT_LABEL + i`` for ``scene.objects[i]``.
    The drawn-subpixel counts (before occlusion by later shapes) let the caller drop objects
    that end up (almost) hidden.
    """
    cv = Canvas(size, np.random.default_rng([scene.seed, 1]))
    drawn: dict[int, int] = {}
    draw_sky(cv, scene)
    if scene.celestial is not None:
        draw_celestial(cv, scene)
        drawn[CELESTIAL] = int(np.count_nonzero(cv.owner == CELESTIAL))
    for cloud in scene.clouds:
        draw_cloud(cv, scene, cloud)
    if scene.ridges:
        draw_ridges(cv, scene)
    if scene.ground == "water":
        draw_water(cv, scene)
    else:
        draw_land(cv, scene)
    for i, obj in enumerate(scene.objects):
        lab = FIRST_OBJECT_LABEL + i
        drawn[lab] = draw_object(cv, scene, obj, lab)
    img, labels = cv.downsample()
    return img, labels, drawn
