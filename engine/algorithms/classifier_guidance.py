"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", §4).

A noise-aware classifier p_φ(y | x_t) steers sampling towards class y by its gradient
g = ∇_{x_t} log p_φ(y | x_t), scaled by s:

- Algorithm 2 (DDIM, and any sampler that reads ε̂): ε̂' = ε̂ − s·√(1−ᾱ_t)·g, i.e. the score
  of p(x_t) p(y | x_t)^s; x̂₀ is recomputed from ε̂'.
- Algorithm 1 (ancestral sampling): x_{t−1} ~ N(μ + s·Σ·g, Σ), the reverse step's mean
  shifted by the variance times the gradient.

``ClassifierGuided`` wraps a ``Denoiser`` so every algorithm can use it unchanged: in mode
"eps" its ``predict`` returns ε̂'; in mode "mean" ``predict`` is left alone and the
sampler adds ``mean_shift`` to its ancestral step (``sampling.ddim_sample`` asks every
denoiser for one). Gradients flow through the classifier only — never the UNet — in fp32,
and combine with classifier-free guidance: ε̂ is whatever the wrapped denoiser's guided
prediction is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..denoiser import Prediction

# (x_t fp32 N x C x h x w, integer t) → log p(y | x_t) per sample, N
LogProb = Callable[[torch.Tensor, int], torch.Tensor]

MODES = ("eps", "mean")


def log_prob_gradient(log_prob: LogProb, x: torch.Tensor, t: int) -> torch.Tensor:
    """∇_x log p(y | x_t) per sample, in fp32 (the sum over the batch has each sample's
    gradient in its own rows, since samples are classified independently)."""
    with torch.enable_grad():
        xf = x.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(xf, t).sum(), xf)
    return grad


class ClassifierGuided:
    """A ``Denoiser`` whose predictions are pushed towards a classifier's target.

    Everything but ``predict`` and ``mean_shift`` is the wrapped denoiser's (its text
    cache, schedule, model-call count)."""

    def __init__(self, denoiser, log_prob: LogProb, scale: float, mode: str = "eps"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        object.__setattr__(self, "denoiser", denoiser)
        object.__setattr__(self, "log_prob", log_prob)
        object.__setattr__(self, "scale", float(scale))
        object.__setattr__(self, "mode", mode)

    def __getattr__(self, name):
        return getattr(self.denoiser, name)

    def __setattr__(self, name, value):
        setattr(self.denoiser, name, value)  # e.g. ``chunks``: state lives in one place

    def predict(self, x: torch.Tensor, t: int, cond, guidance: float = 1.0, uncond=None):
        """Algorithm 2: ε̂' = ε̂ − s √(1−ᾱ_t) ∇ log p(y | x_t); x̂₀ from ε̂'."""
        p = self.denoiser.predict(x, t, cond, guidance, uncond)
        if self.mode != "eps" or self.scale == 0.0:
            return p
        sigma = math.sqrt(1.0 - self.schedule.alpha(t))
        grad = log_prob_gradient(self.log_prob, x, t).to(p.eps.dtype)
        eps = p.eps - self.scale * sigma * grad
        return Prediction(eps, self.schedule.x0_from_eps(x, eps, t))

    def mean_shift(self, x: torch.Tensor, t: int, variance: float) -> torch.Tensor | None:
        """Algorithm 1: s Σ ∇ log p(y | x_t), added to the ancestral step's mean."""
        if self.mode != "mean" or self.scale == 0.0 or variance == 0.0:
            return None
        return self.scale * variance * log_prob_gradient(self.log_prob, x, t).to(x.dtype)


def classifier_log_prob(classifier, target: dict) -> LogProb:
    """The ``LogProb`` of an ``engine.classifier.LatentClassifier`` for a target
    {attribute index: class index, or a tensor of one class index per sample}."""

    def log_prob(x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        return classifier.log_prob(x, tt, target)

    return log_prob
