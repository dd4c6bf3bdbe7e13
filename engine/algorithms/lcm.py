"""Latent consistency models (Luo et al. 2023, "Latent Consistency Models: Synthesizing
High-Resolution Images with Few-Step Inference").

A consistency function f_θ(x_t, ω, c, t) maps any point of the probability-flow ODE's
trajectory straight to its origin x_0. LCM parameterises it from the network's x̂₀ (eq. 9):

    f_θ(x, ω, c, t) = c_skip(t) x + c_out(t) x̂₀(x, ω, c, t),

with c_skip(0) = 1, c_out(0) = 0 so that f is the identity at the clean end (the boundary
condition of Song et al. 2023, eq. 5). Guidance ω is baked in: the distilled UNet takes an
embedding of ω (its ``time_cond_proj_dim`` input) and the model call is a single pass
without classifier-free guidance. Sampling is Algorithm 3 (multistep consistency sampling):
predict x̂₀ = f(x_{τ_n}), re-noise it to the next, smaller τ_{n+1} with fresh noise, repeat.

Here:
- ``lcm_timesteps``: the τ schedule (LCM's skipping grid of the distillation's DDIM solver);
- ``boundary_scalings``: c_skip and c_out;
- ``guidance_embedding``: the sinusoidal embedding of ω that LCM UNets are conditioned on;
- ``embedded_guidance``: installs that embedding on a UNet for the duration of a job;
- ``lcm_sample``: Algorithm 3 as a generator over the ``Denoiser``, like ``ddim_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ..denoiser import Conditioning, Denoiser
from ..schedule import Schedule, prev_timesteps
from .common import Algorithm, Generators, Progress, randn

# LCM's distillation grid: the DDIM solver's 50 steps, skipping k = T / 50 = 20 timesteps
ORIGIN_STEPS = 50
# LCM's c_skip/c_out scale the timestep by 10 (diffusers' LCMScheduler.timestep_scaling),
# so that c_skip ≈ 0 already at t = 19, the first grid point: f is x̂₀ wherever it is used
TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5


def boundary_scalings(t: int | torch.Tensor, timestep_scaling: float = TIMESTEP_SCALING):
    """c_skip(t), c_out(t) of the consistency function (Luo et al. 2023, eq. 9, taking
    Song et al. 2023's c_skip = σ_d² / (t² + σ_d²), c_out = t / √(t² + σ_d²) with the
    timestep scaled): c_skip(0) = 1, c_out(0) = 0."""
    s = t * timestep_scaling
    c_skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
    c_out = s / (s**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def consistency(x: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
    """f(x_t) = c_skip(t) x_t + c_out(t) x̂₀ (eq. 9) for a scalar timestep."""
    c_skip, c_out = boundary_scalings(float(t))
    return c_skip * x + c_out * x0


def lcm_timesteps(
    schedule: Schedule, steps: int, strength: float = 1.0, origin_steps: int = ORIGIN_STEPS
) -> list[int]:
    """The τ_1 > … > τ_n of Algorithm 3: ``steps`` points evenly spaced (floored indices) over
    the distillation's skipping grid (k·T/N − 1 for k = 1…N, N = ``origin_steps``), from the
    top, as diffusers' LCMScheduler does. With ``strength`` < 1 (SDEdit) only the grid points below
    strength·T are used and every step still runs: a few-step model spends all its calls
    on the part of the chain that an edit of that strength needs. Strength 0: no steps."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    T = schedule.num_train_timesteps
    origin_steps = min(origin_steps, T)
    c = T // origin_steps
    usable = int(origin_steps * strength + 1e-6)
    if strength > 0:
        usable = max(usable, 1)  # a small strength still does something
    grid = (np.arange(1, usable + 1) * c - 1)[::-1]  # descending
    if len(grid) == 0:
        return []
    n = max(1, min(int(steps), len(grid)))
    picks = np.floor(np.linspace(0, len(grid), num=n, endpoint=False)).astype(int)
    return [int(t) for t in grid[picks]]


def guidance_embedding(w: torch.Tensor | float, dim: int, dtype=torch.float32) -> torch.Tensor:
    """The sinusoidal embedding of the guidance scale ω that LCM's UNet takes (Luo et al. 2023,
    §4.2: "ω-conditioned" f; the same formula as the Transformer's position embedding,
    applied to 1000·ω). N x ``dim``."""
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1) * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    arg = w[:, None] * freq[None]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(dtype)


def takes_guidance_embedding(unet) -> bool:
    """Whether a UNet is an LCM distilled with ω as input (``time_cond_proj_dim`` set)."""
    return bool(getattr(unet.config, "time_cond_proj_dim", None))


@contextmanager
def embedded_guidance(unet, guidance: float) -> Iterator[None]:
    """Give every call of an LCM ``unet`` the embedding of ω = guidance − 1 as
    ``timestep_cond`` while the block runs (LCM's ω is the excess over the conditional
    prediction: ε_c + ω(ε_c − ε_u) is CFG at scale 1 + ω). Batches of any size get it.
    The hook is removed however the block ends (cancel, error)."""
    dim = int(unet.config.time_cond_proj_dim)
    emb = guidance_embedding(guidance - 1.0, dim)

    def add_condition(module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        kwargs["timestep_cond"] = emb.to(x.device, x.dtype).expand(x.shape[0], -1)
        return args, kwargs

    handle = unet.register_forward_pre_hook(add_condition, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def lcm_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: list[int],
    cond: Conditioning,
    guidance: float,
    generator: Generators,
    keep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    label: str = "",
) -> Algorithm[torch.Tensor]:
    """Multistep latent consistency sampling (Luo et al. 2023, Algorithm 3) from latents
    ``x`` at ``timesteps[0]`` down the given τ's; returns the final x̂₀.

    ``guidance`` is classifier-free guidance on each model call (Ho & Salimans 2022, eq. 6):
    1 for an LCM whose UNet embeds ω (``embedded_guidance`` installs it), a small value
    (1-2) for LCM-LoRA and turbo-style models that have no ω input. ``keep`` is as in
    ``ddim_sample``: outside the mask the latents follow the known image's forward process.
    Yields after every model call with x̂₀ (the consistency function's output)."""
    sched = denoiser.schedule
    n = len(timesteps)
    x0 = x
    for i, (t, t_next) in enumerate(zip(timesteps, prev_timesteps(timesteps))):
        # 1. x̂₀ = f_θ(x_τn, ω, c, τ_n) (eq. 9, with the network's x̂₀)
        p = denoiser.predict(x, t, cond, guidance)
        x0 = consistency(x, p.x0, t)
        # 2. blended diffusion: the known region is the known latents themselves at the end
        if keep is not None:
            x0_known, mask, noise = keep
            x0 = mask * x0 + (1 - mask) * x0_known
        # 3. re-noise to τ_{n+1}: x_τ = √ᾱ_τ x̂₀ + √(1−ᾱ_τ) z, z ~ N(0, I) (Alg. 3, line 6)
        if t_next >= 0:
            z = randn(x.shape, generator, x.device, x.dtype)
            x = sched.q_sample(x0, t_next, z)
            if keep is not None:
                x = mask * x + (1 - mask) * sched.q_sample(x0_known, t_next, noise)
        yield Progress(i + 1, n, t, x0=x0, label=label)
    return x0
