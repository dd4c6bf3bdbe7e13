"""DiffEdit (Couairon et al. 2022, "DiffEdit: Diffusion-based semantic image editing with mask
guidance"): a mask from the disagreement of two prompts' noise estimates, then a masked
DDIM-encode / decode edit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..denoiser import Conditioning, Denoiser
from .common import Algorithm, Progress, randn
from .inversion import ddim_decode, ddim_invert


@dataclass
class DiffEditMask:
    """``map``: the averaged noise difference rescaled to [0, 1]; ``mask``: ``map`` above the
    threshold. Both 1x1xhxw at latent resolution, float."""

    map: torch.Tensor
    mask: torch.Tensor


def normalise(diff: torch.Tensor, quantile: float = 0.99, floor: float = 1e-6) -> torch.Tensor:
    """Rescale a non-negative map to [0, 1] by a robust maximum (§3.1: "rescaled to the range
    [0, 1]"; the quantile ignores a few extreme cells). A map that is ~0 everywhere — the
    prompts agree — stays ~0 instead of being blown up to full range."""
    scale = torch.quantile(diff.flatten().float(), quantile).item()
    return (diff / max(scale, floor)).clamp(0, 1)


def grey_preview(m: np.ndarray) -> np.ndarray:
    """A float HxW map in [0, 1] as an RGB uint8 image."""
    g = (np.asarray(m, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def diffedit_mask(
    denoiser: Denoiser,
    x0: torch.Tensor,
    query: torch.Tensor,
    reference: torch.Tensor,
    t: int,
    generator: torch.Generator,
    n_samples: int = 10,
    threshold: float = 0.5,
    batch_size: int = 2,
    render: Callable[[np.ndarray], np.ndarray] = grey_preview,
) -> Algorithm[DiffEditMask]:
    """Estimate where the query prompt disagrees with the reference prompt (§3.1, step 1).

    1. x_t ~ q(x_t | x_0) for ``n_samples`` noises at timestep ``t`` (the paper: t = 0.5 T);
    2. ε̂(x_t, Q) and ε̂(x_t, R) — query and reference in one batched model call per
       ``batch_size`` noises, without guidance (with a shared unconditional branch guidance
       only rescales the difference, which the normalisation removes);
    3. average |ε̂_Q − ε̂_R| over noises and channels, rescale to [0, 1], threshold.
    ``query``/``reference`` are text embeddings (1xLxD). Yields after every model call with
    ``render(map so far)`` as the preview; returns a ``DiffEditMask``.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError("n_samples and batch_size must be at least 1")
    sched = denoiser.schedule
    total = torch.zeros_like(x0[:, :1], dtype=torch.float32)
    n_calls = -(-n_samples // batch_size)
    done = 0
    for i in range(n_calls):
        k = min(batch_size, n_samples - done)
        # 1. k noisy versions of the encoded image at t
        noise = randn((k, *x0.shape[1:]), generator, x0.device, x0.dtype)
        xt = sched.q_sample(x0.expand(k, -1, -1, -1), t, noise)
        # 2. query and reference noise estimates in one batch
        emb = torch.cat([query.expand(k, -1, -1), reference.expand(k, -1, -1)])
        p = denoiser.predict(torch.cat([xt, xt]), t, emb)
        e_q, e_r = p.eps.float().chunk(2)
        # 3. accumulate |ε̂_Q − ε̂_R|, averaged over channels
        total += (e_q - e_r).abs().mean(dim=1, keepdim=True).sum(dim=0, keepdim=True)
        done += k
        m = normalise(total / done)
        yield Progress(i + 1, n_calls, t, image=render(m[0, 0].cpu().numpy()), label="mask")
    m = normalise(total / done)
    return DiffEditMask(m, (m > threshold).float())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best splits ``values`` (in [0, 1]) into two classes: Otsu 1979,
    the maximum of the between-class variance σ_B²(k) = (μ_T ω(k) − μ(k))² / (ω(k)(1 − ω(k)))
    over a histogram. Adapts to each map, where a fixed 0.5 does not."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    omega = np.cumsum(p)  # ω(k): share of values at or below bin k
    mu = np.cumsum(p * centres)  # μ(k): their first moment
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)² window, edges replicated; separable (a row pass, then a column
    pass), so its cost grows with r, not r²."""
    pool = torch.nn.functional.avg_pool2d
    x = pool(torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate"), (1, 2 * r + 1), 1)
    return pool(torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate"), (2 * r + 1, 1), 1)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al. 2010, "Guided Image Filtering": ``src`` (HxW) is locally an affine function
    q = aᵀI + b of the guide ``guide`` (HxW grey, or HxWxC colour, in [0, 1]), fitted over
    (2r+1)² windows with regularisation ``eps``, so the output's edges follow the image's.
    Alg. 1 for a grey guide; §3.5 (eq. 19–21) for a colour guide, whose per-window
    covariance Σ keeps edges between colours of equal brightness (a blue wall on a grey
    roof) that a grey guide loses."""
    g = np.asarray(guide, dtype=np.float32)
    i = torch.from_numpy(np.ascontiguousarray(g if g.ndim == 3 else g[..., None]))
    i = i.permute(2, 0, 1)[None]  # 1xCxHxW
    p = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))[None, None]
    c = i.shape[1]
    mean_i, mean_p = _box(i, radius), _box(p, radius)
    cov_ip = _box(i * p, radius) - mean_i * mean_p  # 1xCxHxW
    # Σ per pixel (HxWxCxC) from the window means of every channel product
    pairs = i[:, :, None] * i[:, None]  # 1xCxCxHxW
    sigma = _box(pairs.flatten(1, 2), radius).unflatten(1, (c, c))
    sigma = sigma - mean_i[:, :, None] * mean_i[:, None]
    sigma = sigma[0].permute(2, 3, 0, 1) + eps * torch.eye(c)
    a = torch.linalg.solve(sigma, cov_ip[0].permute(1, 2, 0)[..., None])[..., 0]  # eq. 19
    a = a.permute(2, 0, 1)[None]
    b = mean_p - (a * mean_i).sum(1, keepdim=True)  # eq. 20
    return ((_box(a, radius) * i).sum(1) + _box(b, radius)[:, 0])[0].numpy()  # eq. 21


def diffedit(
    denoiser: Denoiser,
    x0: torch.Tensor,
    mask: torch.Tensor,
    cond: Conditioning,
    reference: torch.Tensor,
    steps: int,
    strength: float,
    guidance: float,
) -> Algorithm[torch.Tensor]:
    """Edit inside ``mask`` (latent resolution, 1 = edit) towards the prompt in ``cond``.

    §3.2: 2. DDIM-encode x_0 to x_r, r = ``strength``, with the reference text at guidance 1
    (the paper uses the unconditional model, i.e. an empty reference); 3. decode from x_r
    with the query text and guidance, replacing the region outside the mask at each step by
    the encoding at the same timestep, ỹ_t = M y_t + (1 − M) x_t. Returns latents; at
    t = 0 the outside is exactly x_0.
    """
    timesteps = denoiser.schedule.timesteps_for_strength(steps, strength)
    if not timesteps:
        return x0
    traj = yield from ddim_invert(denoiser, x0, reference, timesteps, label="encode")
    return (
        yield from ddim_decode(
            denoiser, traj[0], timesteps, cond.cond, guidance, cond.uncond, mask, traj
        )
    )
