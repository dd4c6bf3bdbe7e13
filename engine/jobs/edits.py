"""Jobs for RePaint, DiffEdit (mask and edit), inversion and re-editing.

Options (``EditRequest.options``) and their defaults are listed in ``OPTIONS``; each runner
validates its own and raises ``InputError`` with a sentence a person can act on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .. import imageops
from ..algorithms.diffedit import diffedit, diffedit_mask
from ..algorithms.inversion import METHODS as INVERSION_METHODS
from ..algorithms.inversion import Inversion, invert, regenerate
from ..algorithms.repaint import SAMPLERS, repaint, repaint_calls
from ..errors import InputError
from ..types import EditRequest
from .base import (
    JobContext,
    JobResult,
    Prepared,
    check_common,
    finish_image,
    job,
    prepare,
    seeded,
)

OPTIONS: dict[str, dict[str, Any]] = {
    "repaint": {
        "jump_length": 5,  # j: steps to jump back up
        "jump_n_sample": 3,  # r: times each stretch is sampled (1 = no resampling)
        # the paper's ancestral step; on 24 demo-world calibration scenes (seeds 530,000+ and
        # 540,000+) the new object appeared in 79 % with it and 67 % with DDIM (η = 0)
        "sampler": "ddpm",  # or "ddim"
        "eta": 0.0,  # DDIM noise, "ddim" sampler only
        # latent cells. Not grown: the soft border cells then stay partly known, so the
        # decoded border matches the original. On 80 calibration scenes (seeds 530,000+) the
        # new object appeared in 71 % (grow 1: 65 %; no resampling at grow 0: 52 %); on 40 of
        # them the seam ratio fell 2.9 → 1.9 and grow 2 gave 45 %
        "mask_grow": 0,
        "feather": 0.0,  # px; 0 = 1% of the image side
    },
    "diffedit_mask": {
        "reference_prompt": "",  # the paper's default: empty reference
        "n_samples": 10,
        "threshold": 0.5,
        "mask_strength": 0.5,
        "batch_size": 2,  # noises per model call (previews stream between calls)
    },
    "diffedit": {  # plus the diffedit_mask options when no mask is given
        "reference_prompt": "",
        "mask_grow": 0,
        "feather": 0.0,
    },
    "invert": {
        "inversion": "null_text",  # ddim|null_text|null_text_reference|negative_prompt|direct
        "fixed_point": 0,  # extra fixed-point iterations per DDIM inversion step
        "reconstruct": False,  # ddim / negative_prompt / direct: decode a reconstruction too
        "save": None,  # a file path: also write the Inversion there (Inversion.save)
    },
    "reedit": {
        "inversion": None,  # the Inversion from an "invert" job's Finished.extras, or a file
        "depth": 1.0,  # fraction of the inverted chain to regenerate (1 = from the noise)
        "mask_grow": 1,
        "feather": 0.0,
    },
}


class _Options:
    """Typed, validated access to ``EditRequest.options`` with per-method defaults."""

    def __init__(self, method: str, options: Mapping[str, Any]):
        self.defaults = OPTIONS[method]
        self.options = options

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.options:
            return self.options[key]
        return self.defaults.get(key, default)

    def number(self, key: str, kind=float, lo=None, hi=None):
        value = self.get(key)
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise InputError(f"The option {key!r} must be a number, got {value!r}.") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise InputError(f"The option {key!r} must be between {lo} and {hi}, got {value}.")
        return value

    def choice(self, key: str, choices) -> str:
        value = self.get(key)
        if value not in choices:
            raise InputError(f"The option {key!r} must be one of {list(choices)}, got {value!r}.")
        return value


def _size_params(prep_or_hw) -> dict[str, str]:
    h, w = prep_or_hw if isinstance(prep_or_hw, tuple) else prep_or_hw.original.shape[:2]
    return {"size": f"{w}x{h}"}


# ---- RePaint -------------------------------------------------------------------------------


@job("repaint")
def run_repaint(ctx: JobContext, req: EditRequest):
    """RePaint: fill the masked area; req.strength is not used (the chain runs in full)."""
    check_common(req)
    o = _Options("repaint", req.options)
    if req.mask is None:
        raise InputError("RePaint fills in a masked area: paint a mask over it first.")
    j = o.number("jump_length", int, 1, 1000)
    r = o.number("jump_n_sample", int, 1, 100)
    sampler = o.choice("sampler", SAMPLERS)
    eta = o.number("eta", float, 0.0, 1.0)
    prep = prepare(ctx, req, grow=o.number("mask_grow", int, 0, 64))
    if float(prep.mask_latent.max()) <= 0:
        raise InputError("The mask is empty: paint the area RePaint should fill in.")
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    latents = yield from repaint(
        ctx.denoiser,
        prep.latents,
        prep.mask_latent,
        cond,
        req.steps,
        req.guidance,
        seeded(req),
        j,
        r,
        sampler,
        eta,
    )
    feather = o.number("feather", float, 0.0, 1000.0)
    image = finish_image(ctx, latents, prep, prep.original.shape[:2], feather)
    calls = repaint_calls(len(ctx.denoiser.schedule.timesteps(req.steps)), j, r)
    return JobResult(image, {**_size_params(prep), "unet_calls": calls})


# ---- DiffEdit ------------------------------------------------------------------------------


def _overlay(working: np.ndarray, colour=(255, 40, 40), alpha: float = 0.55):
    """A renderer for mask previews: the working image tinted where the map is high."""
    base = working.astype(np.float32)
    tint = np.asarray(colour, dtype=np.float32)

    def render(m: np.ndarray) -> np.ndarray:
        m = imageops.resize(m.astype(np.float32), working.shape[:2])[..., None] * alpha
        return (base * (1 - m) + tint * m).round().astype(np.uint8)

    return render


def _mask_phase(ctx: JobContext, req: EditRequest, o: _Options, prep: Prepared):
    """Run DiffEdit's mask estimation; returns (soft mask at original size, raw map there)."""
    n_samples = o.number("n_samples", int, 1, 256)
    threshold = o.number("threshold", float, 0.0, 1.0)
    strength = o.number("mask_strength", float, 0.01, 1.0)
    batch = o.number("batch_size", int, 1, 256)
    d = ctx.denoiser
    t = d.schedule.timesteps_for_strength(req.steps, strength)[0]
    query, reference = d.encode_text(req.prompt), d.encode_text(str(o.get("reference_prompt")))
    est = yield from diffedit_mask(
        d,
        prep.latents,
        query,
        reference,
        t,
        seeded(req),
        n_samples,
        threshold,
        batch,
        _overlay(prep.working),
    )
    hw = prep.original.shape[:2]
    # threshold the map interpolated to pixels (bilinear, then a blur over half a latent
    # cell), not the latent cells themselves: the mask's edge then falls between cell
    # centres where the evidence says, instead of on the cell grid. On 20 demo-world
    # calibration scenes (seeds 500,000+ / 510,000+) this raised the mean IoU from 0.52 to
    # 0.55 at the paper's threshold and strength.
    f = ctx.bundle.vae_factor
    diff_map = est.map[0, 0].cpu().numpy()
    fine = imageops.blur(imageops.resize(diff_map, prep.working.shape[:2]), f / 2)
    binary = (fine > threshold).astype(np.float32)
    soft = imageops.resize(imageops.blur(binary, f / 4), hw)  # a soft edge for blending
    raw = imageops.resize(diff_map, hw)
    return soft, raw


def _u8(m: np.ndarray) -> np.ndarray:
    return (np.asarray(m, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)


@job("diffedit_mask")
def run_diffedit_mask(ctx: JobContext, req: EditRequest):
    """DiffEdit step 1 only. Finished.image: the mask over the image; extras["mask"]: the
    soft mask (uint8 HxW, 255 = edit), extras["mask_map"]: the unthresholded map."""
    check_common(req)
    o = _Options("diffedit_mask", req.options)
    prep = prepare(ctx, dataclasses.replace(req, mask=None))
    soft, raw = yield from _mask_phase(ctx, req, o, prep)
    image = _overlay(prep.original)(soft)
    extras = {"mask": _u8(soft), "mask_map": _u8(raw)}
    return JobResult(image, {**_size_params(prep), "mask_area": float(soft.mean())}, extras)


@job("diffedit")
def run_diffedit(ctx: JobContext, req: EditRequest):
    """DiffEdit: the mask (computed first when req.mask is None), then the masked edit to
    depth req.strength. extras["mask"] holds the mask used."""
    check_common(req)
    o = _Options("diffedit", req.options)
    o.defaults = {**OPTIONS["diffedit_mask"], **OPTIONS["diffedit"]}
    d = ctx.denoiser
    grow = o.number("mask_grow", int, 0, 64)
    prep = prepare(ctx, req, grow=grow)
    if prep.mask is None:
        soft, _ = yield from _mask_phase(ctx, req, o, prep)
        mask_w = imageops.resize(soft, prep.working.shape[:2])
        lat = imageops.latent_mask(mask_w, prep.latents.shape[-2:], grow=grow)
        prep = dataclasses.replace(
            prep,
            mask=soft,
            mask_working=mask_w,
            mask_latent=torch.from_numpy(lat)[None, None].to(prep.latents.device),
        )
    cond = d.condition(req.prompt, req.negative_prompt, req.guidance)
    reference = d.encode_text(str(o.get("reference_prompt")))
    latents = yield from diffedit(
        d, prep.latents, prep.mask_latent, cond, reference, req.steps, req.strength, req.guidance
    )
    feather = o.number("feather", float, 0.0, 1000.0)
    image = finish_image(ctx, latents, prep, prep.original.shape[:2], feather)
    return JobResult(image, _size_params(prep), {"mask": _u8(prep.mask)})


# ---- inversion and re-editing --------------------------------------------------------------


@job("invert")
def run_invert(ctx: JobContext, req: EditRequest):
    """Invert the image for req.prompt; extras["inversion"] is the reusable ``Inversion``.
    Finished.image is the guided reconstruction (null-text, or with ``reconstruct``) or the
    input. req.strength and req.mask are not used."""
    check_common(req)
    o = _Options("invert", req.options)
    method = o.choice("inversion", INVERSION_METHODS)
    fixed_point = o.number("fixed_point", int, 0, 20)
    prep = prepare(ctx, dataclasses.replace(req, mask=None))
    d = ctx.denoiser
    inv = yield from invert(
        d,
        prep.latents,
        req.prompt,
        req.steps,
        req.guidance,
        method,
        req.negative_prompt,
        fixed_point,
    )
    hw = prep.original.shape[:2]
    inv.model, inv.image_size, inv.working_size = ctx.bundle.name, hw, prep.working.shape[:2]
    inv.source_image = prep.original
    if inv.reconstruction is None and o.get("reconstruct"):
        inv.reconstruction = yield from regenerate(d, inv, d.encode_text(req.prompt))
    if inv.reconstruction is not None:
        image = finish_image(ctx, inv.reconstruction, None, hw)
    else:
        image = prep.original
    if o.get("save"):
        try:
            inv.save(str(o.get("save")))
        except OSError as e:
            raise InputError(f"Could not write the inversion to {o.get('save')}: {e}.") from e
    return JobResult(image, {**_size_params(hw), **inv.summary()}, {"inversion": inv})


@job("reedit")
def run_reedit(ctx: JobContext, req: EditRequest):
    """Regenerate an inverted image with req.prompt (empty: the source prompt) at the
    inversion's guidance, optionally only inside req.mask. req.image may be omitted (the
    inversion keeps its source image); req.steps/guidance/strength are the inversion's."""
    o = _Options("reedit", req.options)
    inv = o.get("inversion")
    if isinstance(inv, str | os.PathLike):
        try:
            inv = Inversion.load(inv)
        except (OSError, RuntimeError, TypeError, KeyError) as e:
            raise InputError(f"Could not read an inversion from {inv}: {e}.") from e
    if isinstance(inv, Inversion):
        inv = inv.to(ctx.bundle.device, ctx.bundle.dtype)
    else:
        raise InputError("Re-editing needs an inversion: run 'invert' on the image first.")
    if inv.model and inv.model != ctx.bundle.name:
        raise InputError(
            f"This inversion was made with the model {inv.model!r}, but {ctx.bundle.name!r} is "
            "loaded; load that model again or invert the image with this one."
        )
    image = inv.source_image if req.image is None else imageops.check_image(req.image)
    if image is None:
        raise InputError("Re-editing needs the inverted image; pass it with the request.")
    if inv.image_size is not None and tuple(image.shape[:2]) != tuple(inv.image_size):
        h, w = inv.image_size
        raise InputError(
            f"The image is {image.shape[1]}x{image.shape[0]} but was inverted at {w}x{h}; "
            "invert it again after resizing or cropping."
        )
    hw = image.shape[:2]
    mask = imageops.mask_to_float(req.mask, hw)
    mask_w = mask_l = None
    latents0 = inv.trajectory[-1]
    if mask is not None:
        grow = o.number("mask_grow", int, 0, 64)
        mask_w = imageops.resize(mask, inv.working_size or hw)
        lat = imageops.latent_mask(mask_w, latents0.shape[-2:], grow=grow)
        mask_l = torch.from_numpy(lat)[None, None].to(latents0.device)
    prep = Prepared(image, image, latents0, mask, mask_w, mask_l)
    ctx.preview_size = tuple(inv.working_size or hw)
    cond = ctx.denoiser.encode_text(req.prompt or inv.prompt)
    depth = o.number("depth", float, 0.01, 1.0)
    start = min(inv.steps - 1, round(inv.steps * (1 - depth)))
    latents = yield from regenerate(ctx.denoiser, inv, cond, mask=mask_l, start=start)
    feather = o.number("feather", float, 0.0, 1000.0)
    image = finish_image(ctx, latents, prep, hw, feather)
    params = {"steps": inv.steps, "guidance": inv.guidance, "strength": depth}
    return JobResult(image, {**_size_params(hw), **params, **inv.summary()})
