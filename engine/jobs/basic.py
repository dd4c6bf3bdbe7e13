"""Text-to-image and SDEdit jobs."""

from __future__ import annotations

from .. import imageops
from ..algorithms.generate import generate
from ..algorithms.sdedit import sdedit
from ..types import EditRequest
from .base import JobContext, JobResult, Options, finish_image, job, prepare, seeded, start_job
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
    shape = (1, b.latent_channels, hw[0] // f, hw[1] // f)
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    den = guided_denoiser(ctx, o, eta_of(o))  # classifier guidance, when asked for
    latents = yield from generate(den, cond, shape, req.steps, req.guidance, seeded(req), eta_of(o))
    image = finish_image(ctx, latents, None, (h, w))
    return JobResult(image, {"size": f"{w}x{h}"})


@job("sdedit")
def run_sdedit(ctx: JobContext, req: EditRequest):
    o = start_job(ctx, req)
    prep = prepare(ctx, req, grow=o.number("mask_grow"))
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    den = guided_denoiser(ctx, o, eta_of(o))  # classifier guidance, when asked for
    latents = yield from sdedit(
        den,
        prep.latents,
        cond,
        req.steps,
        req.strength,
        req.guidance,
        seeded(req),
        prep.mask_latent,
        eta_of(o),
    )
    image = finish_image(ctx, latents, prep, prep.original.shape[:2], o.number("feather"))
    h, w = prep.original.shape[:2]
    return JobResult(image, {"size": f"{w}x{h}"})
