"""Pixel-space helpers at the engine boundary: sizing policy, strokes, masks, compositing.

Sizing policy: a model works best near the resolution it was trained at, so every input is
resized (not cropped or padded) to a *working size* whose area is about the model's native
size squared, keeping the aspect ratio, each side rounded to the VAE's multiple (8 for SD).
Results are resized back to the input's exact size, and wherever a mask says "keep", the
output pixels are the input pixels, bit for bit. ``max_side`` caps the working size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InputError


def working_size(h: int, w: int, native: int, multiple: int = 8) -> tuple[int, int]:
    """(h, w) near ``native``² pixels with the input's aspect, multiples of ``multiple``."""
    if h < 1 or w < 1:
        raise InputError("The image is empty.")
    scale = math.sqrt(native * native / (h * w))
    hh = max(multiple, int(round(h * scale / multiple)) * multiple)
    ww = max(multiple, int(round(w * scale / multiple)) * multiple)
    return hh, ww


def resize_note(hw: tuple[int, int], native: int, multiple: int = 8) -> str:
    """How a result of size ``hw`` comes from the model's working size (``working_size``):
    "upscaled from 128x88 to 3000x2000", "downscaled from …", or "" when made at its size."""
    wh, ww = working_size(*hw, native, multiple)
    if (wh, ww) == tuple(hw):
        return ""
    way = "upscaled" if wh * ww < hw[0] * hw[1] else "downscaled"
    return f"{way} from {ww}x{wh} to {hw[1]}x{hw[0]}"


def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 (or HxW float mask) resized to (height, width) with Lanczos / bilinear."""
    if image.shape[:2] == tuple(hw):
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.LANCZOS))
    img = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR)).clip(0, 1)


def check_image(image: np.ndarray | None, what: str = "image") -> np.ndarray:
    if image is None:
        raise InputError(f"This method needs an {what}; open or paste one first.")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise InputError(f"The {what} must be 8-bit RGB, got shape {image.shape} {image.dtype}.")
    return image[..., :3]


def composite_strokes(image: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
    """Alpha-composite an RGBA stroke layer over an RGB image (both uint8, same size)."""
    if strokes is None:
        return image
    if strokes.shape[:2] != image.shape[:2] or strokes.ndim != 3 or strokes.shape[2] != 4:
        raise InputError(
            f"The stroke layer is {strokes.shape[1]}x{strokes.shape[0]} RGBA-expected and "
            f"the image is {image.shape[1]}x{image.shape[0]}; they must match."
        )
    a = strokes[..., 3:4].astype(np.float32) / 255.0
    out = image.astype(np.float32) * (1 - a) + strokes[..., :3].astype(np.float32) * a
    return out.round().astype(np.uint8)


def mask_to_float(mask: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    """uint8 (255 = edit) or float mask → float32 in [0, 1]; size must match the image."""
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(hw):
        raise InputError(
            f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {hw[1]}x{hw[0]}; "
            "they must be the same size."
        )
    m = mask.astype(np.float32)
    return m / 255.0 if mask.dtype == np.uint8 else m.clip(0, 1)


def latent_mask(mask: np.ndarray, latents: torch.Tensor, grow: int = 0) -> torch.Tensor:
    """Area-downsample a float pixel mask to the resolution of ``latents``, optionally grown by
    ``grow`` latent cells (so generated content has room to blend): 1x1xhxw float on their
    device, as the algorithms take it."""
    h, w = latents.shape[-2:]
    img = Image.fromarray(mask.astype(np.float32), mode="F")
    small = np.asarray(img.resize((w, h), Image.BOX)).copy()
    return torch.from_numpy(dilate(small, grow).clip(0, 1))[None, None].to(latents.device)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation of a float mask by a (2r+1)² square."""
    if radius <= 0:
        return mask
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy()


def blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float mask (edges replicated)."""
    if sigma <= 0:
        return mask
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def feather(
    mask: np.ndarray, radius: float, check_cancel: Callable[[], None] | None = None
) -> np.ndarray:
    """Soften a float mask's edge *inwards*: pixels outside the mask stay exactly 0, so
    compositing leaves every unmasked pixel bit-exact, and the edit fades in linearly over
    ``radius`` px inside the border (the original shows through there, so the border itself
    cannot become a seam). A part of the mask narrower than 2·``radius`` peaks below full
    opacity, as a feathered selection does in any image editor; it never vanishes.

    The cost grows with ``radius`` × the mask's bounding box, so the work is confined to that
    box and ``check_cancel`` (which raises to stop) is called between erosions."""
    steps = int(math.ceil(radius))
    if steps <= 0:
        return mask
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(mask.shape, np.float32)
    # one ring of zeros around the box keeps erosion there exact; at the image border the
    # box stops (erosion treats the outside of the image as inside the mask)
    h, w = mask.shape
    y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, h)
    x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, w)
    out = np.zeros(mask.shape, np.float32)
    out[y0:y1, x0:x1] = _feather_box(mask[y0:y1, x0:x1], steps, check_cancel)
    return out


def _feather_box(mask: np.ndarray, steps: int, check_cancel) -> np.ndarray:
    # the mean of the mask eroded 0, 1, …, steps−1 times is min(distance inside, steps)/steps;
    # erosion pads with +1 (max_pool pads with −inf), so the image border is not a mask border
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    total = torch.zeros_like(t)
    for _ in range(steps):
        if check_cancel is not None:
            check_cancel()
        total += t
        if not t.any():
            break  # fully eroded: the remaining terms are zero
        t = -F.max_pool2d(-t, 3, stride=1, padding=1)
    return (total / steps)[0, 0].numpy().clip(0, 1)


def composite(original: np.ndarray, edited: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Blend edited into original by a float mask; where mask is 0 the original is kept exactly."""
    if mask is None:
        return edited
    m = mask[..., None].astype(np.float32)
    out = original.astype(np.float32) * (1 - m) + edited.astype(np.float32) * m
    out = out.round().astype(np.uint8)
    keep = mask <= 0
    out[keep] = original[keep]
    return out


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB between uint8 images, optionally over the pixels ``where`` is True."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if where is not None:
        d = d[where]
    mse = float(np.mean(d**2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def crop_box(mask: np.ndarray, padding: int) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1): the bounding box of a mask's nonzero pixels grown by ``padding`` px
    on every side and clipped to the image, for inpainting only the masked area at full
    working resolution ("only masked"); None for an empty mask. The editor places previews
    of such a job with the same box."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape[:2]
    p = max(0, int(padding))
    return (
        max(0, int(rows[0]) - p),
        max(0, int(cols[0]) - p),
        min(h, int(rows[-1]) + 1 + p),
        min(w, int(cols[-1]) + 1 + p),
    )


def fill_hole(image: np.ndarray, mask: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """``image`` (uint8 RGB) with the area under ``mask`` (float, 1 = hole) replaced by the
    surrounding colours blurred into it (a normalised blur of the pixels outside the mask,
    repeated at halving widths so large holes fill too); outside the mask it is unchanged."""
    keep = (mask < 0.5).astype(np.float32)
    if not keep.any():
        return np.full_like(image, image.reshape(-1, 3).mean(0).round().astype(np.uint8))
    sigma = sigma or max(2.0, 0.1 * max(image.shape[:2]))
    src = image.astype(np.float32)
    filled = src.copy()
    for s in (sigma * 4, sigma * 2, sigma, sigma / 2):
        weight = blur(keep, s)
        for c in range(3):
            num = blur(src[..., c] * keep, s)
            est = num / np.maximum(weight, 1e-6)
            filled[..., c] = np.where(weight > 1e-3, est, filled[..., c])
    out = np.where(keep[..., None] > 0, src, filled)
    return out.clip(0, 255).round().astype(np.uint8)
