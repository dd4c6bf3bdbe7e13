"""Text-to-image and SDEdit jobs."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import imageops
from ..algorithms.common import Generators, randn
from ..algorithms.generate import generate
from ..algorithms.lcm import embedded_guidance, lcm_sample, lcm_timesteps, takes_guidance_embedding
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


def lcm_guidance(ctx: JobContext, guidance: float):
    """The LCM sampler's classifier-free guidance and the context it runs in: an LCM whose
    UNet embeds ω gets the scale through that embedding and one pass per step (CFG 1);
    other few-step models (LCM-LoRA, Turbo, Hyper, TCD) take ``guidance`` as plain CFG."""
    unet = ctx.bundle.unet
    if takes_guidance_embedding(unet):
        return 1.0, embedded_guidance(unet, guidance)
    return guidance, nullcontext()


def run_lcm(
    ctx: JobContext,
    o: Options,
    req: EditRequest,
    x: torch.Tensor,
    timesteps: list[int],
    gen: Generators,
    guide: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
):
    """Multistep consistency sampling (Luo et al. 2023, Alg. 3) from ``x``: pure noise for
    text-to-image, or, with ``guide`` (SDEdit), the guide latents noised to
    ``timesteps[0]`` here; ``mask`` keeps the rest of the guide."""
    cfg, context = lcm_guidance(ctx, req.guidance)
    # CFG 1: one pass per step, no unconditional branch (the negative prompt is unused)
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, cfg)
    den = guided_denoiser(ctx, o, 0.0)  # classifier guidance on ε̂ (Algorithm 2)
    keep = None
    if guide is not None:
        if not timesteps:
            return guide  # strength 0
        noise = randn(guide.shape, gen, guide.device, guide.dtype)
        x = ctx.bundle.schedule.q_sample(guide, timesteps[0], noise)  # x(t0) ~ q(x_t0 | x_g)
        keep = (guide, mask, noise) if mask is not None else None
    with context:
        return (yield from lcm_sample(den, x, timesteps, cond, cfg, gen, keep))


@job("generate")
def run_generate(ctx: JobContext, req: EditRequest):
    o = start_job(ctx, req)
    b = ctx.bundle
    h, w = req.height or b.native_size, req.width or b.native_size
    hw = imageops.working_size(h, w, b.native_size, b.vae_factor)
    f = b.vae_factor
    seeds = batch_seeds(req)
    shape = (len(seeds), b.latent_channels, hw[0] // f, hw[1] // f)
    if o.choice("sampler") == "lcm":
        gens = generators(seeds)
        x = randn(shape, gens, b.device, torch.float32)  # x_T ~ N(0, I)
        latents = yield from run_lcm(ctx, o, req, x, lcm_timesteps(b.schedule, req.steps), gens)
    else:
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
    seeds = batch_seeds(req)
    guide = prep.latents.expand(len(seeds), -1, -1, -1)
    if o.choice("sampler") == "lcm":
        # every requested step runs, spread over the part of the chain below the strength
        timesteps = lcm_timesteps(ctx.bundle.schedule, req.steps, req.strength)
        latents = yield from run_lcm(
            ctx, o, req, guide, timesteps, generators(seeds), guide, prep.mask_latent
        )
    else:
        cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
        den = guided_denoiser(ctx, o, eta_of(o))  # classifier guidance, when asked for
        latents = yield from sdedit(
            den,
            guide,
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
