"""Shared job plumbing: the context a runner gets, its result, and input preparation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import imageops
from ..denoiser import Denoiser
from ..errors import InputError
from ..models import ModelBundle
from ..types import EditRequest

JOB_RUNNERS: dict[str, Callable] = {}


def job(method: str):
    """Register a runner for ``EditRequest.method``."""

    def register(fn):
        JOB_RUNNERS[method] = fn
        return fn

    return register


@dataclass
class JobContext:
    bundle: ModelBundle
    denoiser: Denoiser
    preview_size: tuple[int, int] | None = None  # set by runners: (h, w) of the working image


@dataclass
class JobResult:
    image: np.ndarray | None
    parameters: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """An input image at working size, its latents, and the mask at every resolution."""

    original: np.ndarray  # uint8 HxWx3 as given (strokes composited)
    working: np.ndarray  # uint8 at working size
    latents: torch.Tensor  # 1xCxhxw
    mask: np.ndarray | None  # float, original size
    mask_working: np.ndarray | None  # float, working size
    mask_latent: torch.Tensor | None  # 1x1xhxw float


def check_common(req: EditRequest) -> None:
    if not 1 <= req.steps <= 1000:
        raise InputError(f"Steps must be between 1 and 1000, got {req.steps}.")
    if not 0.0 <= req.strength <= 1.0:
        raise InputError(f"Strength must be between 0 and 1, got {req.strength}.")
    if req.guidance < 0:
        raise InputError(f"Guidance must not be negative, got {req.guidance}.")


def prepare(ctx: JobContext, req: EditRequest, grow: int = 0) -> Prepared:
    """Composite strokes, resize to working size, encode, and bring the mask along."""
    b = ctx.bundle
    image = imageops.check_image(req.image)
    image = imageops.composite_strokes(image, req.strokes)
    mask = imageops.mask_to_float(req.mask, image.shape[:2])
    hw = imageops.working_size(*image.shape[:2], b.native_size, b.vae_factor)
    working = imageops.resize(image, hw)
    latents = b.encode(working).float()
    mask_w = mask_l = None
    if mask is not None:
        mask_w = imageops.resize(mask, hw)
        lat = imageops.latent_mask(mask_w, latents.shape[-2:], grow=grow)
        mask_l = torch.from_numpy(lat)[None, None].to(latents.device)
    ctx.preview_size = hw
    return Prepared(image, working, latents, mask, mask_w, mask_l)


def finish_image(
    ctx: JobContext,
    latents: torch.Tensor,
    prep: Prepared | None,
    size: tuple[int, int],
    feather_px: float = 0.0,
) -> np.ndarray:
    """Decode, resize to the requested size and, with a mask, composite onto the original
    so that every pixel outside the mask is the input pixel (the feather lies inside it)."""
    out = imageops.resize(ctx.bundle.decode(latents), size)
    if prep is not None and prep.mask is not None:
        out = paste_into(prep.original, out, prep.mask, feather_px)
    return out


def paste_into(
    original: np.ndarray, edited: np.ndarray, mask: np.ndarray, feather_px: float = 0.0
) -> np.ndarray:
    """``edited`` inside ``mask`` (float, image size), faded in over ``feather_px`` px inside
    its border (0: 1 % of the image side, at least 2 px); ``original`` everywhere else."""
    radius = feather_px or max(2.0, 0.01 * max(original.shape[:2]))
    return imageops.composite(original, edited, imageops.feather(mask, radius))


def seeded(req: EditRequest) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(req.seed))
