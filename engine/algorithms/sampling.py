"""The DDIM sampler (Song et al. 2021) that text-to-image and SDEdit share."""

from __future__ import annotations

import torch

from ..denoiser import Conditioning, Denoiser
from ..schedule import prev_timesteps
from .common import Algorithm, Generators, Progress, randn


def ddim_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: list[int],
    cond: Conditioning,
    guidance: float,
    generator: Generators,
    eta: float = 0.0,
    keep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    label: str = "",
) -> Algorithm[torch.Tensor]:
    """Denoise latents ``x`` (at ``timesteps[0]``) down the given timesteps.

    Song et al. 2021, eq. 12 with σ from eq. 16 (η = 0: deterministic DDIM, η = 1: DDPM).
    ``keep = (x0_known, mask, noise)`` restricts the edit to ``mask`` (1 = edit): after every
    step the region outside it is replaced by the known latents forward-noised to the new
    timestep, q(x_t | x_0) (Avrahami et al. 2023, "Blended Latent Diffusion", Alg. 1).
    Yields after every model call; returns the final latents x_0.
    """
    sched = denoiser.schedule
    n = len(timesteps)
    for i, (t, t_prev) in enumerate(zip(timesteps, prev_timesteps(timesteps))):
        # 1. predict ε̂ and x̂₀ with classifier-free guidance
        p = denoiser.predict(x, t, cond, guidance)
        # a guided denoiser may shift the ancestral step's mean (classifier guidance, Alg. 1)
        shift = denoiser.mean_shift(x, t, sched.ddim_sigma(t, t_prev, eta) ** 2) if eta else None
        # 2. x_{t-1} = √ᾱ_{t-1} x̂₀ + √(1-ᾱ_{t-1}-σ²) ε̂ + σ z
        z = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
        x = sched.ddim_step(p.x0, p.eps, t, t_prev, eta, z)
        if shift is not None:
            x = x + shift
        # 3. blended diffusion: outside the mask, follow the known image's forward process
        if keep is not None:
            x0_known, mask, noise = keep
            known = sched.q_sample(x0_known, t_prev, noise) if t_prev >= 0 else x0_known
            x = mask * x + (1 - mask) * known
        yield Progress(i + 1, n, t, x0=p.x0, label=label)
    return x
