"""Text-to-image: DDIM from pure noise (Song et al. 2021, Alg. of §4.1)."""

from __future__ import annotations

import torch

from ..denoiser import Conditioning, Denoiser
from .common import Algorithm, Generators, randn
from .sampling import ddim_sample


def generate(
    denoiser: Denoiser,
    cond: Conditioning,
    latent_shape: tuple[int, int, int, int],
    steps: int,
    guidance: float,
    generator: Generators,
    eta: float = 0.0,
    label: str = "",
) -> Algorithm[torch.Tensor]:
    """Sample latents of ``latent_shape`` for the prompt in ``cond``; returns x_0 latents
    (``label``: its steps' progress label)."""
    timesteps = denoiser.schedule.timesteps(steps)
    # x_T ~ N(0, I): the chain starts from pure noise
    x = randn(latent_shape, generator, denoiser.device, torch.float32)
    return (
        yield from ddim_sample(denoiser, x, timesteps, cond, guidance, generator, eta, label=label)
    )
