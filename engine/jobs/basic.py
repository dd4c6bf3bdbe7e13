"""Text-to-image and SDEdit jobs."""

from __future__ import annotations

from .. import imageops
from ..algorithms.generate import generate
from ..algorithms.sdedit import sdedit
from ..types import EditRequest
from .base import (
    JobContext,
    Options,
    batch_result,
    batch_seeds,
    generators,
    job,
    prepare,
    start_job,
)
from .guidance import guided_denoiser

# options and inputs: engine.methods


def eta_of(o: Options) -> float:
    """The DDIM step's noise: the ddpm sampler is DDIM with η = 1 (Song et al. 2021, eq. 16:
    the ancestral DDPM step); ddim takes the ``eta`` option (0: deterministic)."""
    return 1.0 if o.choice("sampler") == "ddpm" else o.number("eta")


@job("generate")
def run_generate(ctx: JobContext, req: EditRequest):
    o = start_job(ctx, req)
    b = ctx.bundle
    h, w = req.height or b.native_size, req.width or b.native_size
    hw = imageops.working_size(h, w, b.native_size, b.vae_factor)
    f = b.vae_factor
    seeds = batch_seeds(req)
    shape = (len(seeds), b.latent_channels, hw[0] // f, hw[1] // f)
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    den = guided_denoiser(ctx, o, eta_of(o))  # classifier guidance, when asked for
    latents = yield from generate(
        den, cond, shape, req.steps, req.guidance, generators(seeds), eta_of(o)
    )
    return batch_result(ctx, latents, None, (h, w), seeds, {"size": f"{w}x{h}"})


@job("sdedit")
def run_sdedit(ctx: JobContext, req: EditRequest):
    o = start_job(ctx, req)
    prep = prepare(ctx, req, grow=o.number("mask_grow"))
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    den = guided_denoiser(ctx, o, eta_of(o))  # classifier guidance, when asked for
    seeds = batch_seeds(req)
    latents = yield from sdedit(
        den,
        prep.latents.expand(len(seeds), -1, -1, -1),
        cond,
        req.steps,
        req.strength,
        req.guidance,
        generators(seeds),
        prep.mask_latent,
        eta_of(o),
    )
    h, w = prep.original.shape[:2]
    size = {"size": f"{w}x{h}"}
    return batch_result(ctx, latents, prep, (h, w), seeds, size, o.number("feather"))
