"""Differential diffusion (Levin & Fried 2023, "Differential Diffusion: Giving Each Pixel Its
Strength"): a soft mask's grey level is how much that pixel may change."""

from __future__ import annotations

import torch

from ..denoiser import Conditioning, Denoiser
from ..schedule import prev_timesteps
from .common import Algorithm, Generators, Progress, randn


def join_counts(change: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """How many of the last ``steps`` steps each cell takes part in: SDEdit's count for the
    cell's own strength, ``strength`` × its change level (``Schedule.steps_for_strength``,
    computed in float64 as that function does, so a uniform map gives SDEdit's count)."""
    s = (change.double() * float(strength)).clamp(0, 1)
    k = torch.floor(steps * s + 1e-6).clamp(max=steps)
    return torch.where(s > 0, k.clamp(min=1), torch.zeros_like(k)).to(torch.long)


def differential(
    denoiser: Denoiser,
    x0: torch.Tensor,
    change: torch.Tensor,
    cond: Conditioning,
    steps: int,
    strength: float,
    guidance: float,
    generator: Generators,
    eta: float = 0.0,
) -> Algorithm[torch.Tensor]:
    """Edit the latents ``x0`` with each cell changing as much as ``change`` (latent
    resolution, 1x1xhxw in [0, 1]) times ``strength`` says.

    Levin & Fried 2023, Alg. 1: every cell joins the denoising at its own time, t0 = its
    strength (SDEdit's t0, Meng et al. 2022); until then it follows the original's forward
    process q(x_t | x_0), injected after every step. On the DDIM sub-chain of ``steps`` steps
    (Song et al. 2021, eq. 12, ``eta``), a cell with strength s takes the last
    ``steps_for_strength(steps, s)`` steps, so a uniform map of level s is exactly SDEdit at
    strength s (same noise, same calls), and a cell at 0 is ``x0`` at the end. Yields after
    every model call; returns the final latents.
    """
    sched = denoiser.schedule
    ts = sched.timesteps(steps)
    n = len(ts)
    k = join_counts(change, n, strength).to(x0.device)
    if int(k.max()) == 0:
        return x0
    first = n - int(k.max())  # nothing changes before the strongest cell joins
    run = ts[first:]

    def active(j: int) -> torch.Tensor:
        """Cells taking part in the state at index ``j`` of the chain (``n``: the output)."""
        return ((k > 0) & (j >= n - k)).to(x0.dtype)

    # 1. x_t0 ~ q(x_t0 | x_0) at the strongest cell's t0 (SDEdit's start)
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    x = sched.q_sample(x0, run[0], noise)
    for i, (t, t_prev) in enumerate(zip(run, prev_timesteps(run))):
        # 2. one DDIM step of the model everywhere (cells not yet joined are replaced below)
        p = denoiser.predict(x, t, cond, guidance)
        z = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
        x = sched.ddim_step(p.x0, p.eps, t, t_prev, eta, z)
        # 3. cells that join later follow the original: x_{t-1} ~ q(x_{t-1} | x_0)
        m = active(first + i + 1)
        known = sched.q_sample(x0, t_prev, noise) if t_prev >= 0 else x0
        x = m * x + (1 - m) * known
        now = active(first + i)
        yield Progress(i + 1, len(run), t, x0=now * p.x0 + (1 - now) * x0, label="differential")
    return x
