"""Text-to-image and SDEdit jobs."""

from __future__ import annotations

from .. import imageops
from ..algorithms.generate import generate
from ..algorithms.sdedit import sdedit
from ..errors import InputError
from ..types import EditRequest
from .base import JobContext, JobResult, check_common, finish_image, job, prepare, seeded


@job("generate")
def run_generate(ctx: JobContext, req: EditRequest):
    check_common(req)
    b = ctx.bundle
    h, w = req.height or b.native_size, req.width or b.native_size
    if not (8 <= h <= 8192 and 8 <= w <= 8192):
        raise InputError(f"Image size {w}x{h} is out of range (8 to 8192 pixels a side).")
    hw = imageops.working_size(h, w, b.native_size, b.vae_factor)
    ctx.preview_size = hw
    f = b.vae_factor
    shape = (1, b.latent_channels, hw[0] // f, hw[1] // f)
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    eta = float(req.options.get("eta", 0.0))
    latents = yield from generate(
        ctx.denoiser, cond, shape, req.steps, req.guidance, seeded(req), eta
    )
    image = finish_image(ctx, latents, None, (h, w))
    return JobResult(image, {"size": f"{w}x{h}"})


@job("sdedit")
def run_sdedit(ctx: JobContext, req: EditRequest):
    check_common(req)
    prep = prepare(ctx, req, grow=int(req.options.get("mask_grow", 1)))
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    eta = float(req.options.get("eta", 0.0))
    latents = yield from sdedit(
        ctx.denoiser,
        prep.latents,
        cond,
        req.steps,
        req.strength,
        req.guidance,
        seeded(req),
        prep.mask_latent,
        eta,
    )
    image = finish_image(
        ctx, latents, prep, prep.original.shape[:2], float(req.options.get("feather", 0.0))
    )
    h, w = prep.original.shape[:2]
    return JobResult(image, {"size": f"{w}x{h}"})
