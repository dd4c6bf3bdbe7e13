"""SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with SDEs")."""

from __future__ import annotations

import torch

from ..denoiser import Conditioning, Denoiser
from .common import Algorithm, Generators, randn
from .sampling import ddim_sample


def sdedit(
    denoiser: Denoiser,
    x0: torch.Tensor,
    cond: Conditioning,
    steps: int,
    strength: float,
    guidance: float,
    generator: Generators,
    mask: torch.Tensor | None = None,
    eta: float = 0.0,
) -> Algorithm[torch.Tensor]:
    """Perturb the guide latents ``x0`` to t0 = strength and denoise them with the prompt.

    Meng et al. 2022, Alg. 1: x(t0) = α(t0) x_g + σ(t0) z, then solve the reverse SDE/ODE
    from t0 to 0 (here DDIM). strength 0 returns ``x0`` unchanged; strength 1 is
    text-to-image that ignores the guide. ``mask`` (latent resolution, 1 = edit) keeps the
    rest of the guide on its own forward trajectory so only the masked area changes.
    """
    timesteps = denoiser.schedule.timesteps_for_strength(steps, strength)
    if not timesteps:
        return x0
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    # 1. x(t0) ~ q(x_t0 | x_g): perturb the guide with Gaussian noise
    x = denoiser.schedule.q_sample(x0, timesteps[0], noise)
    keep = (x0, mask, noise) if mask is not None else None
    # 2. denoise from t0 to 0 with the prompt
    return (yield from ddim_sample(denoiser, x, timesteps, cond, guidance, generator, eta, keep))
