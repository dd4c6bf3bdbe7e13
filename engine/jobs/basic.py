"""Text-to-image and SDEdit jobs."""

from __future__ import annotations

from .. import imageops
from ..algorithms.generate import generate
from ..algorithms.sdedit import sdedit
from ..types import EditRequest
from .base import JobContext, JobResult, finish_image, job, prepare, seeded, start_job

# options and inputs: engine.methods


@job("generate")
def run_generate(ctx: JobContext, req: EditRequest):
    o = start_job(ctx, req)
    b = ctx.bundle
    h, w = req.height or b.native_size, req.width or b.native_size
    hw = imageops.working_size(h, w, b.native_size, b.vae_factor)
    f = b.vae_factor
    shape = (1, b.latent_channels, hw[0] // f, hw[1] // f)
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    latents = yield from generate(
        ctx.denoiser, cond, shape, req.steps, req.guidance, seeded(req), o.number("eta")
    )
    image = finish_image(ctx, latents, None, (h, w))
    return JobResult(image, {"size": f"{w}x{h}"})


@job("sdedit")
def run_sdedit(ctx: JobContext, req: EditRequest):
    o = start_job(ctx, req)
    prep = prepare(ctx, req, grow=o.number("mask_grow"))
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    latents = yield from sdedit(
        ctx.denoiser,
        prep.latents,
        cond,
        req.steps,
        req.strength,
        req.guidance,
        seeded(req),
        prep.mask_latent,
        o.number("eta"),
    )
    image = finish_image(ctx, latents, prep, prep.original.shape[:2], o.number("feather"))
    h, w = prep.original.shape[:2]
    return JobResult(image, {"size": f"{w}x{h}"})
