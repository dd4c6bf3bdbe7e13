"""RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models"), run in latent space."""

from __future__ import annotations

import torch

from ..denoiser import Conditioning, Denoiser
from .common import Algorithm, Progress, randn

SAMPLERS = ("ddim", "ddpm")


def repaint_schedule(n_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The resampling time sequence of RePaint (§4.2, Fig. 3; the authors' ``get_schedule_jump``).

    Entries are *step indices* on an ``n_steps`` chain: ``n_steps - 1`` is the noisiest state,
    0 the least noisy one, and ``-1`` the clean output. The sequence starts at ``n_steps - 1``
    and ends at ``-1``; every decrease is one reverse step (one model call), every increase
    one forward step q(x_t | x_{t-1}). At indices 0, j, 2j, … below ``n_steps - j`` the chain
    jumps back up ``j`` steps, ``r - 1`` times each, so every such stretch is sampled r times.

    Model calls: n + j·(r−1)·⌈(n−j)/j⌉ for n > j, e.g. the paper's T = 250, j = 10, r = 10
    costs 250 + 10·9·24 = 2,410.
    """
    if n_steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError("n_steps, jump_length and jump_n_sample must be at least 1")
    jumps = {k: jump_n_sample - 1 for k in range(0, n_steps - jump_length, jump_length)}
    t = n_steps - 1
    ts = [t]
    while t >= 0:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts


def repaint_calls(n_steps: int, jump_length: int, jump_n_sample: int) -> int:
    """Model calls RePaint makes: the number of reverse transitions in its schedule."""
    ts = repaint_schedule(n_steps, jump_length, jump_n_sample)
    return sum(1 for a, b in zip(ts, ts[1:]) if b < a)


def repaint(
    denoiser: Denoiser,
    x0: torch.Tensor,
    mask: torch.Tensor,
    cond: Conditioning,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    jump_length: int,
    jump_n_sample: int,
    sampler: str = "ddpm",
    eta: float = 0.0,
    strength: float = 1.0,
    start: torch.Tensor | None = None,
) -> Algorithm[torch.Tensor]:
    """Inpaint ``mask`` (latent resolution, 1 = generate) of the known latents ``x0``.

    Lugmayr et al. 2022, Alg. 1 with the resampling schedule of §4.2, on a ``steps``-step
    sub-chain of the model's schedule. ``sampler`` "ddpm" is the paper's ancestral step
    (eq. 7 via the posterior of Ho et al. 2020, eqs. 6–7); "ddim" uses the DDIM step
    (Song et al. 2021, eq. 12, with ``eta``) for the unknown region instead, as diffusers'
    RePaintScheduler does by default. ``jump_length`` (j) and ``jump_n_sample`` (r) have no
    default here: the paper's are 10 / 10 at 250 steps, the app's are declared once, with
    the figures that chose them, in ``engine.methods``. Yields after every model call with
    x̂₀ composited from the known latents and the model's prediction; returns the final
    latents.

    ``strength`` < 1 runs only the last part of the chain (SDEdit's t0 = strength, Meng et
    al. 2022) from ``start`` (latents equal to ``x0`` outside the mask; inside it what the
    masked area starts from, e.g. the original or a fill) forward-noised to t0, so the area
    keeps some of its start. At strength 1 the masked area starts from pure noise.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    sched = denoiser.schedule
    # ascending: step index k ↔ timestep chain[k]
    chain = sched.timesteps_for_strength(steps, strength)[::-1]
    if not chain:
        return x0
    n = len(chain)
    ts = repaint_schedule(n, jump_length, jump_n_sample)
    n_calls = sum(1 for a, b in zip(ts, ts[1:]) if b < a)

    def timestep(k: int) -> int:
        return chain[k] if k >= 0 else -1

    def noise() -> torch.Tensor:
        return randn(x0.shape, generator, x0.device, x0.dtype)

    # x_T ~ N(0, I) (Alg. 1, line 1); the known region drawn from q(x_T | x_0) like every
    # later known state (indistinguishable at ᾱ_T ≈ 0, exact for shortened chains)
    z = noise()
    if strength >= 1.0:
        x = mask * z + (1 - mask) * sched.q_sample(x0, timestep(n - 1), z)
    else:  # x_t0 ~ q(x_t0 | start): the masked area keeps some of its start
        x = sched.q_sample(x0 if start is None else start, timestep(n - 1), z)
    i = 0
    for k, k_next in zip(ts, ts[1:]):
        t, t_next = timestep(k), timestep(k_next)
        if k_next > k:
            # jump back: x_t ~ q(x_t | x_{t-1}) = N(√(1−β_t) x_{t−1}, β_t I) (Alg. 1, line 10)
            x = sched.q_step(x, t, t_next, noise())
            continue
        # 1. known region: x_{t−1}^known ~ q(x_{t−1} | x_0) (Alg. 1, line 5; eq. 8 top)
        known = sched.q_sample(x0, t_next, noise()) if t_next >= 0 else x0
        # 2. unknown region: one reverse step of the model (Alg. 1, lines 6–7; eq. 8 middle)
        p = denoiser.predict(x, t, cond, guidance)
        if sampler == "ddpm":
            unknown = sched.ddpm_step(x, p.x0, t, t_next, noise())
        else:
            z = noise() if eta > 0 else None
            unknown = sched.ddim_step(p.x0, p.eps, t, t_next, eta, z)
        # 3. combine: x_{t−1} = m ⊙ x^known + (1 − m) ⊙ x^unknown (Alg. 1, line 8; eq. 8 bottom;
        #    our mask is 1 where the paper's m is 0)
        x = mask * unknown + (1 - mask) * known
        i += 1
        yield Progress(i, n_calls, t, x0=mask * p.x0 + (1 - mask) * x0, label="repaint")
    return x
